"""`python -m django_app <command>`: Django's manage.py, e.g. `python -m django_app migrate`."""

import os
import sys

from django.core.management import execute_from_command_line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")
execute_from_command_line([f"{sys.executable} -m django_app", *sys.argv[1:]])
