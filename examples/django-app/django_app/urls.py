from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("version", views.version),
    path("healthz", views.healthz),
    path("notes", views.notes),
    path("echo", views.echo),
    path("slow", views.slow),
]
