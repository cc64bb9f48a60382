"""The work queue of object keys (apprelease/workqueue.py): the agent's one worker and the
operator's pool of workers take keys from it.

Covers: a key queued once however often added; never handed out twice at the same time, and
passed again after `done` when added meanwhile (with several workers too); retries after a
delay; one pending resync per key, replaced by a newer one and dropped by `forget`; due
resyncs served only when no woken key waits; a key woken while its resync waits moves up;
shutdown wakes waiting workers.
"""

from __future__ import annotations

import threading
import time

import pytest

from apprelease.workqueue import WorkQueue

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now



def test_queue_holds_a_key_once():
    queue = WorkQueue()
    for _ in range(3):
        queue.add("ns/a")
    queue.add("ns/b")
    assert [queue.get(0), queue.get(0), queue.get(0)] == ["ns/a", "ns/b", None]


def test_key_added_while_processing_comes_back_after_done():
    queue = WorkQueue()
    queue.add("ns/a")
    key = queue.get(0)
    queue.add("ns/a")
    assert queue.get(0) is None, "never handed out twice at the same time"
    queue.done(key)
    assert queue.get(0) == "ns/a"


def test_add_after_waits():
    now = [100.0]
    queue = WorkQueue(clock=lambda: now[0])
    queue.add_after("ns/a", 5)
    assert queue.get(0) is None
    now[0] += 5
    assert queue.get(0) == "ns/a"


def test_shut_down_wakes_a_waiting_worker():
    queue = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(queue.get()))
    worker.start()
    time.sleep(0.05)
    queue.shut_down()
    worker.join(2)
    assert got == [None]


def test_a_resync_replaces_the_pending_one_and_forget_drops_it():
    clock = Clock()
    queue = WorkQueue(clock=clock)
    queue.resync_after("a", 30)
    queue.resync_after("a", 5)  # e.g. a progress deadline sooner than the period
    clock.now += 5
    assert queue.get(0) == "a"
    queue.done("a")
    clock.now += 30
    assert queue.get(0) is None, "the replaced resync does not come back"
    queue.resync_after("a", 1)
    queue.forget("a")
    clock.now += 1
    assert queue.get(0) is None and len(queue) == 0


def test_woken_keys_go_before_due_resyncs():
    clock = Clock()
    queue = WorkQueue(clock=clock)
    for key in ("r1", "r2", "r3"):
        queue.resync_after(key, 1)
    clock.now += 1
    queue.add("woken")
    assert queue.get(0) == "woken"
    queue.add("woken-later")  # arrives while resyncs wait: still first
    assert [queue.get(0), queue.get(0)] == ["woken-later", "r1"]


def test_a_key_woken_while_its_resync_waits_moves_up_once():
    clock = Clock()
    queue = WorkQueue(clock=clock)
    queue.resync_after("r1", 1)
    queue.resync_after("a", 1)
    clock.now += 1
    queue.add("a")
    assert [queue.get(0), queue.get(0), queue.get(0)] == ["a", "r1", None], "no second pass of `a` from its stale resync entry"


def test_a_resync_due_while_its_key_is_processed_comes_after_done():
    clock = Clock()
    queue = WorkQueue(clock=clock)
    queue.add("a")
    assert queue.get(0) == "a"
    queue.resync_after("a", 1)
    clock.now += 1
    assert queue.get(0) is None, "never handed out twice at the same time"
    queue.done("a")
    assert queue.get(0) == "a"


def test_workers_never_share_a_key():
    queue = WorkQueue()
    busy: set[str] = set()
    overlaps: list[str] = []
    passes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (key := queue.get(2)) is not None:
            with lock:
                if key in busy:
                    overlaps.append(key)
                busy.add(key)
            time.sleep(0.001)
            with lock:
                busy.discard(key)
                passes.append(key)
            queue.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(2000):
        queue.add(f"k{i % 5}")
    time.sleep(0.2)
    queue.shut_down()
    for t in threads:
        t.join(5)
    assert overlaps == [] and set(passes) == {f"k{i}" for i in range(5)}
