"""Live phases: the in-cluster agent writes what a host is doing while it rotates.

`ClusterAgent` hands `PhaseWriter.report` to `core.reconcile` as its progress callback
(host/progress.py): Building (with the build's stage), Starting, HealthChecking, Switching,
Draining. The rules, decided by `PhaseThrottle` (pure, times passed in, unit-tested):

- at most one status write per `interval` (0.5 s) per HostRelease, counting the Pending
  write that opens a new generation;
- a phase is written only once it has lasted `min_age` (0.1 s) and its window is open, and
  only if its step is still running then (with its latest message, e.g. the build's stage): a newer phase replaces it and the end of the
  reconcile drops it. So a step shorter than `min_age` never costs a write (a write costs
  the apiserver more than such a step costs the host: Starting and Switching usually take
  milliseconds), and every phase that lasts longer than `interval` is seen, in order;
- the writes happen on a thread of their own, so a step never waits for the apiserver;
  a failed write is logged and dropped (the next phase or the final status supersedes it);
- the final Ready or Failed is written by the worker after `close()`, always, unthrottled,
  and after any phase write in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.5
DEFAULT_MIN_AGE = 0.1


@dataclass
class PhaseThrottle:
    """Which reported phase to write, and when. Times are time.monotonic() values."""

    interval: float
    min_age: float = DEFAULT_MIN_AGE
    last_write: float = float("-inf")
    pending: tuple[str, str] | None = None  # (phase, message) of the step running now, not written yet
    phase: str | None = None  # the phase the host is in now
    since: float = 0.0  # when it entered it: a new message in the same phase (a build's stage) keeps it
    written: tuple[str, str] | None = None

    def report(self, phase: str, message: str, now: float) -> None:
        """A step began: what it is doing supersedes whatever was waiting."""
        if phase != self.phase:
            self.phase, self.since = phase, now
        self.pending = None if (phase, message) == self.written else (phase, message)

    def due(self) -> float | None:
        """When the pending phase may be written; None when nothing waits."""
        if self.pending is None:
            return None
        return max(self.last_write + self.interval, self.since + self.min_age)

    def take(self, now: float) -> tuple[str, str] | None:
        """The phase to write at `now`, if one is due; it counts as written from then on."""
        due = self.due()
        if due is None or now < due:
            return None
        taken, self.pending = self.pending, None
        self.written, self.last_write = taken, now
        return taken

    def finish(self) -> None:
        """The reconcile is over: a phase still waiting describes a step that has ended."""
        self.pending = None


class PhaseWriter:
    """Writes the phases `report`ed by the worker thread from a thread of its own."""

    def __init__(self, write: Callable[[str, str], None], *, interval: float = DEFAULT_INTERVAL,
                 min_age: float = DEFAULT_MIN_AGE, last_write: float = float("-inf"),
                 clock: Callable[[], float] = time.monotonic, name: str = "phases"):
        self._write, self._clock, self._name = write, clock, name
        self._throttle = PhaseThrottle(interval, min_age, last_write)
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def last_write(self) -> float:
        return self._throttle.last_write

    def report(self, phase: str, message: str) -> None:
        """The progress callback: never blocks on the apiserver, never raises."""
        with self._cond:
            if self._closed:
                return
            self._throttle.report(phase, message, self._clock())
            if self._thread is None:  # started lazily: a converged host reports nothing
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        """Drop what waits and let a write in flight finish: the caller writes the final status next."""
        with self._cond:
            self._closed = True
            self._throttle.finish()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while (item := self._next()) is not None:
            try:
                self._write(*item)
            except Exception as exc:  # noqa: BLE001 - best effort: the next phase or the final status follows
                log.warning("%s: could not write phase %s: %s", self._name, item[0], exc)

    def _next(self) -> tuple[str, str] | None:
        with self._cond:
            while not self._closed:
                due = self._throttle.due()
                if due is None:
                    self._cond.wait()
                    continue
                now = self._clock()
                taken = self._throttle.take(now)
                if taken is not None:
                    return taken
                self._cond.wait(due - now)
        return None
