"""Logging set-up for entry points; library modules only create their named logger."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that log every request or download at info.
QUIET_LOGGERS = ("httpx", "httpcore", "urllib3", "filelock", "jieba")


def setup_logging(level: int | str = logging.INFO) -> None:
    """Send logs to stderr in one format; call once from a command's `main`."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
