"""Views: `/` (reads the migrated table, so it fails before migrations ran), `/version`,
`/healthz` (no database: it must pass before migrations run), `/notes` (GET: count; POST:
add one), and for apprelease's load generator `POST /echo` (the body's sha256) and
`/slow?seconds=N` (a request that takes N seconds, at most 30)."""

import hashlib
import os
import time

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
    return HttpResponse(f"django-app {__version__}: {Note.objects.count()} notes\n", content_type="text/plain")


def version(request):
    return JsonResponse({"version": __version__, "pid": os.getpid()})


def healthz(request):
    return HttpResponse("ok\n", content_type="text/plain")


@csrf_exempt
def notes(request):
    if request.method == "POST":
        Note.objects.create(text=request.body.decode(errors="replace")[:200])
    return JsonResponse({"notes": Note.objects.count()})


@csrf_exempt
def echo(request):
    body = request.body
    return JsonResponse({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()})


def slow(request):
    seconds = min(max(float(request.GET.get("seconds", "1")), 0.0), 30.0)
    time.sleep(seconds)
    return HttpResponse(f"slept {seconds:g}s\n", content_type="text/plain")
