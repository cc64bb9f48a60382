"""Read-only views of processes through /proc, for the `Nginx` applier.

The agent shares the host's PID namespace (the DaemonSet needs it for `nsenter -t 1`), so
/proc shows the host's nginx master and workers. Used to tell whether our master is alive,
and whether a reload took effect (new workers, old ones shutting down).
"""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def state(pid: int) -> str | None:
    """The one-letter state of `pid` (R, S, Z, ...), or None if there is no such process."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a zombie has exited; only its parent lingers)."""
    return state(pid) not in (None, "Z", "X")


def cmdline(pid: int) -> str:
    """The process title as nginx sets it ("nginx: master process ..."), or '' if gone."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def children(parent: int) -> dict[int, str]:
    """Live children of `parent` with their titles."""
    found: dict[int, str] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = _stat_fields(pid)
        if fields and fields[0] not in ("Z", "X") and int(fields[1]) == parent:
            title = cmdline(pid)
            if title:
                found[pid] = title
    return found


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, ...]."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    return text.rsplit(")", 1)[1].split()
