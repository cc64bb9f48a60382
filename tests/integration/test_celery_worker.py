"""A real Celery worker as a process type: redis, Celery, gunicorn, circusd and nginx, all real.

Covers: `examples/celery-app` (Celery 5.7 with redis-py from the registry) deployed with a
2-replica `celery ... worker` process type — a console script of the venv, run by its
interpreter — while a producer enqueues numbered tasks through nginx without pause; 5
rotations (a new revision each, alternating two releases) move the workers each time (the
old ones get SIGTERM: Celery's warm shutdown finishes the task in hand and hands the rest
back); afterwards every task ran exactly once, both releases ran tasks, and no enqueue failed.
The line printed is the README's number.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from apprelease.host import core, plan
from support.cluster import wait_for
from support.hosts import SERVER_NAME, release_for, running_host
from support.nginx import free_port, http_get

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

ROTATIONS = 5
WORKER = {"worker": {"command": ["celery", "-A", "celery_app.tasks", "worker", "--pool=solo", "--loglevel=INFO",
                                 "--without-gossip", "--without-mingle"],
                     "replicas": 2, "gracefulTimeoutSeconds": 20}}


@pytest.fixture
def redis_url(short_tmp: Path):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(short_tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                        text=True).stdout.strip() == "PONG", 10, "redis did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


class Producer(threading.Thread):
    """Enqueues tasks 0, 1, 2, ... through nginx until stopped; counts every failed request."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.sent, self.failures, self.stop = port, 0, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                resp = http_get(self.port, f"/enqueue?n={self.sent}", SERVER_NAME, method="POST", body=b"")
                ok = resp.status == 200
            except OSError as exc:
                ok, resp = False, exc
            if ok:
                self.sent += 1
            else:
                self.failures.append(str(resp))
                return  # task numbers stay dense: the count of sent tasks is exact
            time.sleep(0.01)


def test_celery_workers_move_with_each_revision_and_lose_no_task(short_tmp, real_index, redis_url):
    port = free_port()
    out = short_tmp / "out"
    out.mkdir()
    out.chmod(0o1777)  # the app user writes done.log here
    done = out / "done.log"
    versions = ["1.0.0", "2.0.0"]

    def deploy(version: str, rotation: int) -> core.Result:
        release = release_for(
            real_index.url, version, name="celeryapp", port=port, static=[],
            requirements=[f"celery-app=={version}", "gunicorn==23.0.0"], entrypoint="celery_app.web:application",
            env={"CELERY_APP_BROKER": redis_url, "CELERY_APP_OUT_DIR": str(out), "ROTATION": str(rotation)},
            extra={"processes": WORKER},
        )
        result = core.reconcile(host, release)
        assert result.status.phase == "Ready", f"{result.plan}: {result.status.message}\n{result.status.log_tail}"
        return result

    with running_host(short_tmp / "host-a") as host:
        first = deploy(versions[0], 0)
        assert [p.wire() for p in first.status.processes] == [{"name": "worker", "replicas": 2, "running": 2}]
        producer = Producer(port)
        producer.start()
        try:
            wait_for(lambda: done.exists() and done.read_text().count("\n") >= 10, 60,
                     lambda: f"the workers run no task: {core.log_tail(host.layout.app('default_celeryapp'), first.status.serving_revision + '.worker-0')}")
            for rotation in range(1, ROTATIONS + 1):
                result = deploy(versions[rotation % 2], rotation)
                assert plan.START_PROCESSES in result.plan.kinds() and plan.STOP in result.plan.kinds()
                time.sleep(1)  # tasks flow to the new workers between rotations
        finally:
            producer.stop.set()
            producer.join(30)
        assert not producer.failures, producer.failures

        def ran() -> Counter:
            return Counter(int(line.split()[0]) for line in done.read_text().splitlines())

        wait_for(lambda: len(ran()) >= producer.sent, 60, lambda: f"{producer.sent - len(ran())} tasks never ran")
        counts = ran()
        by_version = Counter(line.split()[1] for line in done.read_text().splitlines())
    print(f"\ncelery-app with 2 Celery workers: {ROTATIONS} rotations, {producer.sent} tasks enqueued through nginx, "
          f"{len(counts)} ran ({dict(by_version)}), {sum(c - 1 for c in counts.values())} ran twice, "
          f"0 enqueue failures")
    assert set(counts) == set(range(producer.sent)), "tasks lost"
    assert max(counts.values()) == 1, [n for n, c in counts.items() if c > 1]
    assert set(by_version) == set(versions)
