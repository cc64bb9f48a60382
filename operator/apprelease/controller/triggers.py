"""Wake-ups for the per-AppRelease reconcile loops.

Used by `controller.handlers`: watch events on HostReleases, Nodes and AppReleases call
`wake(key)` / `wake_all()`; each AppRelease's daemon waits in `wait(key, timeout)` between
reconciles. An event only says "look again"; what to do is always computed from the API, so
a lost or coalesced wake-up costs at most one resync period, never correctness.

All methods run on Kopf's event loop (the handlers that call them are async).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable


class Wakeups:
    def __init__(self) -> None:
        self._events: dict[Hashable, asyncio.Event] = {}

    def _event(self, key: Hashable) -> asyncio.Event:
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = asyncio.Event()
        return event

    def wake(self, key: Hashable) -> None:
        # Only loops that exist are woken: a loop not started yet reconciles first thing anyway,
        # and keys of objects nobody reconciles must not pile up.
        event = self._events.get(key)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        for event in self._events.values():
            event.set()

    def clear(self, key: Hashable) -> None:
        """Called right before a reconcile: a wake-up arriving during it triggers the next one."""
        self._event(key).clear()

    async def wait(self, key: Hashable, timeout: float) -> bool:
        """Wait until woken or `timeout` passes; True when woken."""
        try:
            await asyncio.wait_for(self._event(key).wait(), timeout=timeout)
        except TimeoutError:
            return False
        return True

    def forget(self, key: Hashable) -> None:
        self._events.pop(key, None)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._events
