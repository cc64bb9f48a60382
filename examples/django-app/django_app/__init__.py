"""A Django sample app for apprelease: WSGI at `django_app.wsgi:application`, one model."""

__version__ = "1.0.0"
