"""What every command shares: settings from the global options, logging, the stdout guard, hint texts."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from zimage_mcp.registry.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [req %(request_id)s] %(message)s"


class CliError(Exception):
    """A failure the user can fix: ``main`` prints its lines on stderr (no traceback) and exits with ``code``."""

    def __init__(self, *lines: str, code: int = 1) -> None:
        super().__init__("\n".join(lines))
        self.code = code


def settings_from(args: argparse.Namespace) -> Settings:
    from zimage_mcp.registry.settings import Settings

    return Settings.from_env(
        registry_file=getattr(args, "registry", None),
        output_dir=getattr(args, "out_dir", None),
        device=getattr(args, "device", None),
        log_level=getattr(args, "log_level", None),
    )


def keep_engine_bytecode(settings: Settings) -> None:
    """Before anything imports torch: keep its bytecode in our cache folder where it has none of its own
    (``cli.bytecode_cache`` says when and why), unless ``[runtime] bytecode_cache`` is off."""
    if settings.bytecode_cache:
        from zimage_mcp.cli.bytecode_cache import keep_bytecode
        from zimage_mcp.registry.settings import default_bytecode_cache_dir

        keep_bytecode(default_bytecode_cache_dir())


def command_name() -> str:
    """How the user can run this program again: the script's absolute path, or ``python -m zimage_mcp``.

    A bare ``zimage-mcp`` is often not on PATH (it lives in the project's ``.venv/bin``).
    """
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "zimage-mcp":
        return str(script.absolute())
    return f"{sys.executable} -m zimage_mcp"


def setup_logging(level: str, log_file: Path | None, errors_reported: bool = False) -> None:
    """Logs go to stderr or the log file, never stdout; each line carries the MCP request id.

    ``errors_reported``: a direct command reports its failure itself in a line or two, so logged
    exceptions (with their tracebacks) are dropped unless the level is DEBUG.
    """
    from zimage_mcp.server import RequestIdFilter

    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    if errors_reported and level.upper() != "DEBUG":
        handler.addFilter(lambda record: not record.exc_info)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def protect_stdout() -> io.BufferedWriter:
    """Move the protocol to a private copy of fd 1; fd 1 and ``sys.stdout`` now write to stderr.

    Returns the binary stream that alone carries the protocol. Called before settings, logging or
    plugins are touched, so nothing printed later (C extensions included) can corrupt the wire.
    """
    sys.stdout.flush()
    wire_fd = os.dup(1)
    os.set_inheritable(wire_fd, False)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(wire_fd, "wb", buffering=0, closefd=False)  # type: ignore[return-value]
