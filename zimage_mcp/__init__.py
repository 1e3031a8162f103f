"""zimage-mcp: an MCP server for the Z-Image family, running on its own in-repo S3-DiT engine.

Plugin authors import the ``hookimpl`` marker from here. It is resolved lazily so that importing
``zimage_mcp.engine`` alone does not pull in pluggy.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    if name == "hookimpl":
        from zimage_mcp.registry.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'zimage_mcp' has no attribute {name!r}")
