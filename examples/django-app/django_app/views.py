"""Views: `/`, `/version`, `/healthz` (no database: it must pass before migrations run), and
`/notes`, which reads the migrated table (GET: count; POST: add one)."""

import os

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import __version__
from .notes.models import Note

SERVED_BY = f"django-app/{__version__}"


def served_by(get_response):
    """Middleware: every answer names the release that served it."""

    def middleware(request):
        response = get_response(request)
        response["X-Served-By"] = SERVED_BY
        return response

    return middleware


def index(request):
    return HttpResponse(f"django-app {__version__}\n", content_type="text/plain")


def version(request):
    return JsonResponse({"version": __version__, "pid": os.getpid()})


def healthz(request):
    return HttpResponse("ok\n", content_type="text/plain")


@csrf_exempt
def notes(request):
    if request.method == "POST":
        Note.objects.create(text=request.body.decode(errors="replace")[:200])
    return JsonResponse({"notes": Note.objects.count()})
