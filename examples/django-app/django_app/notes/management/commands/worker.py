"""`python -m django_app worker`: a background worker, as apprelease's `processes` run one.

It stands in for a queue worker (Celery, RQ, Dramatiq): it works in a loop, and on its stop
signal (SIGTERM) it finishes the item in hand and exits 0. It reports what it is doing in
`$DJANGO_APP_WORKER_DIR/<process>-<replica>-<version>.json` (version, pid, state, items done), so a test
can tell which release each replica runs and that it stopped gracefully.
"""

import json
import os
import signal
import time
from pathlib import Path

from django.core.management.base import BaseCommand

from django_app import __version__


class Command(BaseCommand):
    help = "Run a background worker until SIGTERM."

    def handle(self, *args, **options):
        directory = Path(os.environ["DJANGO_APP_WORKER_DIR"])
        name = f"{os.environ.get('APPRELEASE_PROCESS', 'worker')}-{os.environ.get('APPRELEASE_REPLICA', '0')}"
        report = directory / f"{name}-{__version__}.json"
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        done = 0

        def write(state):
            tmp = report.with_suffix(".tmp")
            tmp.write_text(json.dumps({"version": __version__, "pid": os.getpid(), "state": state, "done": done}))
            os.replace(tmp, report)

        while not stopping:
            write("working")
            time.sleep(0.1)  # one item of work
            done += 1
        write("stopped")
