"""A work queue of object keys, as client-go's: the in-cluster agent's one line of work.

Used by `agent/cluster.py`: watch events, resyncs and retries `add` keys; one worker `get`s
a key, reconciles it and calls `done`. A key is queued at most once however many events
name it, and a key added while it is being processed is processed again afterwards (never
twice at the same time), so the worker always ends on the latest state. `add_after` is for
retries with backoff. No third-party code: a Condition guards everything.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable


class WorkQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()  # queued, or to be queued again when processing ends
        self._processing: set[str] = set()
        self._delayed: list[tuple[float, int, str]] = []  # (due, tie-breaker, key)
        self._seq = itertools.count()
        self._shut_down = False

    def add(self, key: str) -> None:
        with self._cond:
            self._add_locked(key)

    def add_after(self, key: str, delay: float) -> None:
        """Add `key` once `delay` seconds have passed (at once if delay <= 0)."""
        with self._cond:
            if delay <= 0:
                self._add_locked(key)
                return
            heapq.heappush(self._delayed, (self._clock() + delay, next(self._seq), key))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> str | None:
        """The next key (now marked processing), or None on shutdown or when `timeout` passed."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                self._promote_due_locked()
                if self._shut_down:
                    return None
                if self._queue:
                    key = self._queue.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                now = self._clock()
                if deadline is not None and now >= deadline:
                    return None
                waits = [w for w in (self._next_due_in_locked(), None if deadline is None else deadline - now)
                         if w is not None]
                self._cond.wait(min(waits) if waits else None)

    def done(self, key: str) -> None:
        """`key` is processed; if it was added meanwhile, it is queued again now."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shut_down:
                self._queue.append(key)
                self._cond.notify()

    def shut_down(self) -> None:
        """Wake every `get` with None; keys still queued are dropped."""
        with self._cond:
            self._shut_down = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._delayed)

    def _add_locked(self, key: str) -> None:
        if self._shut_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:  # else `done` queues it
            self._queue.append(key)
            self._cond.notify()

    def _promote_due_locked(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            self._add_locked(key)

    def _next_due_in_locked(self) -> float | None:
        return max(0.0, self._delayed[0][0] - self._clock()) if self._delayed else None

