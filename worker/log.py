"""Structured logging on the standard library: one line per event, `key=value` fields (or JSON).

Use `log_event(logger, "finished", execution_id=..., status=...)`; the fields
travel in the record's `fields` attribute so both formatters can render them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = "fields"


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `event` with structured fields (skipped cheaply when the level is off)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_RESERVED: fields})


def _value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """`2026-11-21T10:00:00.123Z INFO worker finished execution_id=... status=succeeded`"""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{ts}.{int(record.msecs):03d}Z {record.levelname} {record.name} {record.getMessage()}"
        fields = getattr(record, _RESERVED, None)
        if fields:
            line += " " + " ".join(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": record.created, "level": record.levelname, "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, _RESERVED, None)
        if fields:
            out.update({k: v if isinstance(v, int | float | bool) or v is None else str(v)
                        for k, v in fields.items()})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Route the root logger to stderr with the chosen formatter (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request at INFO: far too chatty for a worker
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
