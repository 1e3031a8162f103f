"""Our own PyTorch implementation of the Z-Image S3-DiT family.

Imports nothing from MCP, pluggy or the registry, reads no environment variable, and takes explicit
folder and file paths only. Public API (imported lazily, so ``import zimage_mcp.engine`` stays cheap)::

    from zimage_mcp.engine import load_pipeline
    pipe = load_pipeline("/path/to/Z-Image-Turbo")
    out = pipe.generate("a red fox in snow", steps=8, guidance=0.0, seed=7)
    out.images[0].save("fox.png")
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from zimage_mcp.engine.errors import EngineError, GenerationCancelled, InvalidArgument, WeightsError

if TYPE_CHECKING:
    from zimage_mcp.engine.build import SharedComponents, load_pipeline
    from zimage_mcp.engine.pipelines.text_to_image import GenerationOutput, ZImagePipeline

_LAZY = {
    "load_pipeline": "zimage_mcp.engine.build",
    "SharedComponents": "zimage_mcp.engine.build",
    "GenerationOutput": "zimage_mcp.engine.pipelines.text_to_image",
    "ZImagePipeline": "zimage_mcp.engine.pipelines.text_to_image",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zimage_mcp.engine' has no attribute {name!r}")


__all__ = [
    "EngineError",
    "GenerationCancelled",
    "GenerationOutput",
    "InvalidArgument",
    "SharedComponents",
    "WeightsError",
    "ZImagePipeline",
    "load_pipeline",
]
