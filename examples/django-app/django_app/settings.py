"""Settings: everything a host decides comes from the environment (apprelease's `env`).

DJANGO_APP_DB          path of the sqlite database (required: the release directory is
                       read-only for the app, so the database lives elsewhere)
DJANGO_SECRET_KEY      defaults to a fixed test value; set it for anything real
DJANGO_ALLOWED_HOSTS   comma-separated, default "*"
"""

import os

from django.core.exceptions import ImproperlyConfigured

try:
    DATABASE_PATH = os.environ["DJANGO_APP_DB"]
except KeyError:
    raise ImproperlyConfigured("set DJANGO_APP_DB to the path of the sqlite database") from None

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-app-test-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",")
INSTALLED_APPS = ["django_app.notes"]
MIDDLEWARE = ["django_app.views.served_by"]
ROOT_URLCONF = "django_app.urls"
WSGI_APPLICATION = "django_app.wsgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATABASE_PATH}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
