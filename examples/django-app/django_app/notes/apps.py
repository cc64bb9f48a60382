from django.apps import AppConfig


class NotesConfig(AppConfig):
    name = "django_app.notes"
    label = "notes"
