"""The Celery app and its one task. Broker: `CELERY_APP_BROKER` (a redis URL).

`record(n)` takes `CELERY_APP_TASK_SECONDS` (default 0.05) and then appends `n version pid`
to `$CELERY_APP_OUT_DIR/done.log`, so a test can tell that every task ran, once, and which
release ran it. One task at a time per worker (`--pool=solo` in the process command, a
prefetch of 1), so a warm shutdown (SIGTERM) finishes the task in hand and hands the rest back.
"""

import os
import time

from celery import Celery

from . import __version__

app = Celery("celery_app", broker=os.environ.get("CELERY_APP_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="celery_app.record")
def record(n: int) -> None:
    time.sleep(float(os.environ.get("CELERY_APP_TASK_SECONDS", "0.05")))
    line = f"{n} {__version__} {os.getpid()}\n"
    # One short O_APPEND write per task: lines from several workers never interleave.
    fd = os.open(os.path.join(os.environ["CELERY_APP_OUT_DIR"], "done.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
