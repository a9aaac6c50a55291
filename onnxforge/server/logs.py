"""Logging for the server: readable lines for people, JSON lines for log collectors.

With ``--workers`` every line says which process wrote it: text lines carry ``[worker N]``
or ``[parent]`` after the logger's name; JSON lines carry ``"role": "worker"`` and
``"worker": N``, or ``"role": "parent"`` (one type per key, for collectors that map
fields by type).
"""

from __future__ import annotations

import json
import logging
import time

# Attributes every LogRecord has; anything else was passed as ``extra=`` and is kept.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ProcessLabel(logging.Filter):
    """Marks every record with the process that wrote it: a worker's index, or the parent."""

    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self.fields: dict[str, object] = (
            {"role": "parent"} if worker is None else {"role": "worker", "worker": worker}
        )

    @property
    def text(self) -> str:
        return "parent" if self.fields["role"] == "parent" else f"worker {self.fields['worker']}"

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            setattr(record, key, value)
        return True


def configure(
    level: str = "info", fmt: str = "text", worker: int | None = None, parent: bool = False
) -> None:
    """Log lines to stderr; ``worker`` (its index) or ``parent`` with ``--workers``."""
    handler = logging.StreamHandler()
    label = ProcessLabel(worker) if worker is not None or parent else None
    if label is not None:
        handler.addFilter(label)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        where = f" [{label.text}]" if label is not None else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
