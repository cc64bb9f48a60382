"""A work queue of object keys, as client-go's: the agent's and the operator's line of work.

Used by `agent/cluster.py` (one worker) and `controller/handlers.py` (a pool of workers):
watch events `add` keys; a worker `get`s a key, reconciles it and calls `done`. A key is
queued at most once however many events name it, and a key added while it is being processed
is processed again afterwards (never twice at the same time, whatever the number of
workers), so the last pass always sees the latest state. `add_after` is for retries with
backoff.

`resync_after` is the periodic, level-triggered pass: one pending resync per key (a new one
replaces it), and a due resync waits in a lane of its own that workers take from only when
no key woken by an event is waiting. At fleet scale (bench/fleet.py, 2,000 apps) the resyncs
are most of the passes; without the second lane a rollout's next batch queued behind them.
No third-party code: a Condition guards everything.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

Key = Hashable


class WorkQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[Key] = deque()  # woken by an event (or a retry): served first
        self._resyncs: deque[Key] = deque()  # due resyncs: served when `_queue` is empty
        self._lane: dict[Key, deque[Key]] = {}  # where each queued key waits (`_resyncs` may hold stale entries)
        self._dirty: set[Key] = set()  # queued, or to be queued again when processing ends
        self._processing: set[Key] = set()
        self._delayed: list[tuple[float, int, Key]] = []  # (due, tie-breaker, key)
        self._resync_due: dict[Key, float] = {}  # the one pending resync of each key
        self._resync_heap: list[tuple[float, int, Key]] = []  # entries not in `_resync_due` are stale
        self._seq = itertools.count()
        self._shut_down = False

    def add(self, key: Key) -> None:
        with self._cond:
            self._add_locked(key, self._queue)

    def add_after(self, key: Key, delay: float) -> None:
        """Add `key` once `delay` seconds have passed (at once if delay <= 0)."""
        with self._cond:
            if delay <= 0:
                self._add_locked(key, self._queue)
                return
            heapq.heappush(self._delayed, (self._clock() + delay, next(self._seq), key))
            self._cond.notify()

    def resync_after(self, key: Key, delay: float) -> None:
        """Pass `key` again in `delay` seconds, in the resync lane; replaces its pending resync."""
        with self._cond:
            due = self._clock() + delay
            self._resync_due[key] = due
            heapq.heappush(self._resync_heap, (due, next(self._seq), key))
            self._cond.notify()

    def forget(self, key: Key) -> None:
        """No more resyncs of `key` (its object is gone); a pass already queued still runs."""
        with self._cond:
            self._resync_due.pop(key, None)

    def get(self, timeout: float | None = None) -> Key | None:
        """The next key (now marked processing), or None on shutdown or when `timeout` passed."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                self._promote_due_locked()
                if self._shut_down:
                    return None
                key = self._pop_locked()
                if key is not None:
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                now = self._clock()
                if deadline is not None and now >= deadline:
                    return None
                waits = [w for w in (self._next_due_in_locked(), None if deadline is None else deadline - now)
                         if w is not None]
                self._cond.wait(min(waits) if waits else None)

    def done(self, key: Key) -> None:
        """`key` is processed; if it was added meanwhile, it is queued again now."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shut_down:
                self._lane.setdefault(key, self._queue).append(key)
                self._cond.notify()

    def shut_down(self) -> None:
        """Wake every `get` with None; keys still queued are dropped."""
        with self._cond:
            self._shut_down = True
            self._cond.notify_all()

    def __len__(self) -> int:
        """Keys waiting to be served now or later (retries and resyncs included)."""
        with self._cond:
            return len(self._lane) + len(self._delayed) + len(self._resync_due)

    def _add_locked(self, key: Key, lane: deque[Key]) -> None:
        if self._shut_down:
            return
        if key in self._dirty:
            if lane is self._queue and self._lane.get(key) is self._resyncs:
                # Woken while its resync waits: it moves up (the stale resync entry is skipped).
                self._lane[key] = self._queue
                if key not in self._processing:
                    self._queue.append(key)
            return
        self._dirty.add(key)
        self._lane[key] = lane
        if key not in self._processing:  # else `done` queues it
            lane.append(key)
            self._cond.notify()

    def _pop_locked(self) -> Key | None:
        for lane in (self._queue, self._resyncs):
            while lane:
                key = lane.popleft()
                if self._lane.get(key) is lane:
                    del self._lane[key]
                    return key
        return None

    def _promote_due_locked(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            self._add_locked(key, self._queue)
        while self._resync_heap and self._resync_heap[0][0] <= now:
            due, _, key = heapq.heappop(self._resync_heap)
            if self._resync_due.get(key) == due:
                del self._resync_due[key]
                self._add_locked(key, self._resyncs)

    def _next_due_in_locked(self) -> float | None:
        dues = [heap[0][0] for heap in (self._delayed, self._resync_heap) if heap]
        return max(0.0, min(dues) - self._clock()) if dues else None
