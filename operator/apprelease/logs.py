"""Structured log lines: one JSON object per line, for `--log-json` of the operator and the agent.

Who calls it: agent/cli.py (`apprelease agent run --log-json`) and controller/cli.py
(`apprelease operator --log-json`) install `JsonFormatter` on the root logger's handlers,
so log collectors (Loki, Elasticsearch, ...) get fields instead of parsing text.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, thread, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def use_json(logger: logging.Logger | None = None) -> None:
    """Format every handler of `logger` (default: the root logger) as JSON lines."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(JsonFormatter())
