"""A WSGI app that enqueues Celery tasks, and the tasks a Celery worker runs (see README.md)."""

__version__ = "1.0.0"
