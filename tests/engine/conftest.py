from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zimage_mcp.engine.config import TRANSFORMER_PRESETS


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthesized tiny model in the published layouts, shared by the engine tests (read-only)."""
    from zimage_mcp.engine.presets.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "Z-Image-Tiny", seed=0)


def diffusers_tiny_transformer(seed: int):
    """diffusers' ZImageTransformer2DModel at the tiny preset, with every weight randomized."""
    from diffusers import ZImageTransformer2DModel

    cfg = TRANSFORMER_PRESETS["tiny"]
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in cfg.to_json_dict().items() if not k.startswith("_")}
    model = ZImageTransformer2DModel(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model
