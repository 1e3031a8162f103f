"""Python bytecode for the engine's imports, kept in our cache folder where it cannot be kept in place.

Python compiles each imported module's source unless it finds a ``.pyc`` beside it. Installers usually write
them (pip does; uv only with ``--compile-bytecode``, and Python then writes them on the first import). Where
the packages have none and none can be written (``PYTHONDONTWRITEBYTECODE=1``, which many container images
set, or a read-only environment), every start compiles torch and the MCP stack again. On an H100 host that
was ``import torch`` in 2.6-2.8 s instead of 1.2-1.4 s, and torch, the engine and the MCP stack in 3.8-4.2 s
instead of 1.8-1.9 s (``benchmarks/RESULTS.md`` §16). So, only then, imports read and write ``.pyc`` files under a
folder of ours (``sys.pycache_prefix``): the first start compiles as before, the next ones do not. The
source trees get nothing written into them. ``[runtime] bytecode_cache = false`` turns it off; a
``PYTHONPYCACHEPREFIX`` of the user's own always wins.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# torch: the largest import of a start, on the first image's path; mcp: the server's own (0.7-0.9 s with its
# bytecode on the H100 host, 1.1-1.5 s without).
PROBE_PACKAGES = ("torch", "mcp")


def needs_private_bytecode(package: str) -> bool:
    """Whether importing ``package`` would compile its source each time: no ``.pyc`` beside it, and
    none may be written there. Finds the package without importing it."""
    if sys.pycache_prefix is not None:
        return False  # the user's PYTHONPYCACHEPREFIX (or -X pycache_prefix) decides
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return False
    if os.path.exists(importlib.util.cache_from_source(spec.origin)):
        return False  # installed with its bytecode: read in place
    writable = os.access(os.path.dirname(spec.origin), os.W_OK)
    return sys.dont_write_bytecode or not writable


def keep_bytecode(folder: Path, packages: tuple[str, ...] = PROBE_PACKAGES) -> bool:
    """Point later imports, this process's and its children's, at ``folder`` for their bytecode when one of
    ``packages`` would otherwise be compiled at every start. Returns whether it did."""
    uncached = [name for name in packages if needs_private_bytecode(name)]
    if not uncached:
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.info("Python bytecode cannot be kept in %s (%s): imports compile their source each start", folder, e)
        return False
    sys.pycache_prefix = str(folder)
    sys.dont_write_bytecode = False
    # Children (torch.compile's workers, Ray's processes) read what this process wrote; the variable does not
    # make them write, so PYTHONDONTWRITEBYTECODE still holds for them.
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder)
    log.info(
        "Python bytecode kept in %s: %s installed without it and none can be written beside it, so each "
        "start would compile the source again ([runtime] bytecode_cache = false turns this off)",
        folder,
        f"{' and '.join(uncached)} {'was' if len(uncached) == 1 else 'were'}",
    )
    return True
