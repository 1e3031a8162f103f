"""Our own PyTorch implementation of the Z-Image S3-DiT family.

Imports nothing from MCP, pluggy or the registry. Public API::

    from zimage_mcp.engine import load_pipeline
    pipe = load_pipeline("/path/to/Z-Image-Turbo")
    out = pipe.generate("a red fox in snow", steps=8, guidance=0.0, seed=7)
    out.images[0].save("fox.png")
"""

from zimage_mcp.engine.errors import EngineError, GenerationCancelled, WeightsError
from zimage_mcp.engine.loader import load_pipeline
from zimage_mcp.engine.pipeline import GenerationOutput, ZImagePipeline

__all__ = ["EngineError", "GenerationCancelled", "GenerationOutput", "WeightsError", "ZImagePipeline", "load_pipeline"]
