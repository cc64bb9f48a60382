"""What the host data plane reports about its own work, for whoever wants to count it.

`core` calls a `Recorder`; the in-cluster agent passes `metrics.AgentRecorder` (Prometheus),
the standalone CLI and tests the silent default. Injected rather than imported so the data
plane needs neither prometheus_client nor anything above it (import-linter holds that line).
"""

from __future__ import annotations

from typing import Protocol


class Recorder(Protocol):
    def venv_ensured(self, seconds: float, reused: bool) -> None: ...

    def step_done(self, step: str, seconds: float) -> None: ...

    def health_check_failed(self, app_key: str) -> None: ...


class SilentRecorder:
    def venv_ensured(self, seconds: float, reused: bool) -> None:
        pass

    def step_done(self, step: str, seconds: float) -> None:
        pass

    def health_check_failed(self, app_key: str) -> None:
        pass
