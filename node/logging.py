"""structlog configured once for the whole process.

Human console output on a TTY, JSON lines otherwise. The standard library's loggers (libp2p's among them)
are routed through the same processors; libp2p is held at WARNING unless ``--log-level debug``.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "console", "json"]
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Chatty third-party loggers kept quiet unless the user asks for debug output.
_QUIET = ("libp2p", "multiaddr", "async_service", "hypercorn", "eth", "trie", "urllib3", "httpx", "asyncio")


def configure_logging(fmt: LogFormat = "auto", level: str = "info", stream=None) -> None:
    """Configure structlog and stdlib logging. Idempotent; later calls replace earlier settings.

    Raises `ValueError` for an unknown level or format.
    """
    if level.lower() not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}")
    if fmt not in ("auto", "console", "json"):
        raise ValueError(f"unknown log format {fmt!r}; use auto, console or json")
    stream = stream or sys.stderr
    numeric = _LEVELS[level.lower()]
    use_json = fmt == "json" or (fmt == "auto" and not getattr(stream, "isatty", lambda: False)())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if use_json else (lambda _l, _m, e: e),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _QUIET:
        quiet = logging.getLogger(name)
        quiet.setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
        # libp2p installs its own handlers at import; ours is the only one that should print.
        for old in list(quiet.handlers):
            quiet.removeHandler(old)
        quiet.propagate = True


def get_logger(name: str, **bound) -> structlog.stdlib.BoundLogger:
    """A logger named ``name`` with ``bound`` key/values. Lazy: safe to call at import, before
    `configure_logging` (binding eagerly would freeze structlog's default configuration into it)."""
    return structlog.get_logger(name, **bound)
