"""Reference images for Omni: checks, diffusers' resize/crop, VAE-mode latents and SigLIP2 features.

As ``ZImageOmniPipeline``: an image over 1 MP is resized (LANCZOS) to 1 MP (to width*height when both are
given); SigLIP2 sees that resized image through its own processor; the VAE sees it center-cropped to
multiples of 16 and takes the distribution's mode. SigLIP2 runs through transformers'
``Siglip2VisionModel`` and ``Siglip2ImageProcessor`` (via AutoImageProcessor), from local folders only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import Tensor

from zimage_mcp.engine.errors import InvalidArgument, WeightsError
from zimage_mcp.engine.vae.model import AutoencoderKL, image_to_tensor, normalize_latents
from zimage_mcp.engine.weights.files import load_strict, read_files, shard_files, strip_prefix

if TYPE_CHECKING:  # transformers is imported where it is used: importing the engine stays cheap
    from transformers import BaseImageProcessor, Siglip2VisionConfig, Siglip2VisionModel

MAX_AREA = 1024 * 1024
MIN_SIDE, MAX_ASPECT, MULTIPLE = 64, 8, 16


def check_reference(image: object, index: int) -> Image.Image:
    """A readable PIL image of at least 64 px a side and aspect <= 8, as RGB. InvalidArgument names ``images[i]``."""
    if not isinstance(image, Image.Image):
        raise InvalidArgument(f"images[{index}]", f"must be a PIL image, got {type(image).__name__}")
    try:
        image.load()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise InvalidArgument(f"images[{index}]", f"unreadable image: {e}") from e
    w, h = rgb.size
    if w < MIN_SIDE or h < MIN_SIDE:
        raise InvalidArgument(f"images[{index}]", f"too small ({w}x{h}); both sides must be at least {MIN_SIDE} px")
    if max(w / h, h / w) > MAX_ASPECT:
        raise InvalidArgument(f"images[{index}]", f"aspect ratio of {w}x{h} is beyond {MAX_ASPECT}:1")
    return rgb


def fit_reference(image: Image.Image, width: int | None, height: int | None) -> tuple[Image.Image, Image.Image]:
    """-> (the image for SigLIP2: at most 1 MP, the image for the VAE: that one center-cropped to multiples of 16)."""
    w, h = image.size
    if w * h > MAX_AREA:
        area = width * height if width and height else MAX_AREA
        scale = math.sqrt(area / (w * h))
        image = image.resize((int(w * scale), int(h * scale)), Image.Resampling.LANCZOS)
        w, h = image.size
    cw, ch = w // MULTIPLE * MULTIPLE, h // MULTIPLE * MULTIPLE
    left, top = (w - cw) // 2, (h - ch) // 2
    return image, image.crop((left, top, left + cw, top + ch))


@torch.no_grad()
def encode_reference(vae: AutoencoderKL, image: Image.Image) -> Tensor:
    """RGB image (multiples of 16) -> clean DiT latent (16, H/8, W/8): the VAE mean, normalized.

    The reference pipeline hands the VAE ``image.bfloat16()``; pixels are rounded the same way here
    (the VAE itself still runs in its own dtype) so both see the same input.
    """
    dtype = next(vae.parameters()).dtype
    device = next(vae.parameters()).device
    x = image_to_tensor(image).to(torch.bfloat16).to(device, dtype)  # (1, 3, H, W) in [-1, 1]
    mean, _ = vae.encode(x)
    return normalize_latents(mean, vae.cfg)[0].float()


class SiglipEncoder:
    """Siglip2VisionModel + its image processor: ``features(image)`` -> last hidden state as (h, w, S)."""

    def __init__(self, model: Siglip2VisionModel, processor: BaseImageProcessor) -> None:
        self.model = model.eval().requires_grad_(False)
        self.processor = processor

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def features(self, image: Image.Image) -> Tensor:
        weight = self.model.embeddings.patch_embedding.weight
        inputs = self.processor(images=[image], return_tensors="pt")
        h, w = (int(v) for v in inputs["spatial_shapes"][0])
        out = self.model(
            pixel_values=inputs["pixel_values"].to(weight.device, weight.dtype),
            pixel_attention_mask=inputs["pixel_attention_mask"].to(weight.device),
            spatial_shapes=inputs["spatial_shapes"].to(weight.device),
        ).last_hidden_state  # (1, max_num_patches, S); the first h*w rows are the image's patches
        return out[0, : h * w].reshape(h, w, -1)


def _vision_config(path: Path) -> Siglip2VisionConfig:
    from transformers import Siglip2VisionConfig

    if not path.is_file():
        raise WeightsError(f"missing SigLIP2 config: looked for {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data = data.get("vision_config", data)  # a full Siglip2Config nests the vision part
        data.pop("model_type", None)
        return Siglip2VisionConfig(**data)
    except (ValueError, TypeError, AttributeError) as e:
        raise WeightsError(f"SigLIP2 config {path} is unreadable: {e}") from e


def load_siglip(model_dir: Path, processor_dir: Path, device: torch.device | str, dtype: torch.dtype) -> SiglipEncoder:
    """``siglip/`` (config.json + model.safetensors or shards) and ``siglip_processor/``, strictly and offline."""
    from transformers import AutoImageProcessor, Siglip2VisionModel

    model_dir, processor_dir = Path(model_dir), Path(processor_dir)
    config = _vision_config(model_dir / "config.json")
    files = shard_files(model_dir, "model.safetensors.index.json", "model.safetensors")
    sd = strip_prefix(read_files(files, dtype, device), ("vision_model.",))
    with torch.device("meta"):
        model = Siglip2VisionModel(config)
    load_strict(model, sd, ", ".join(str(f) for f in files))
    if not (processor_dir / "preprocessor_config.json").is_file():
        raise WeightsError(f"missing SigLIP2 image processor: looked for preprocessor_config.json in {processor_dir}")
    try:
        # Resolves to the class diffusers gets for ``Siglip2ImageProcessor`` (torchvision or PIL backend).
        processor = AutoImageProcessor.from_pretrained(str(processor_dir), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise WeightsError(f"SigLIP2 image processor in {processor_dir} failed to load: {e}") from e
    if not type(processor).__name__.startswith("Siglip2ImageProcessor"):
        raise WeightsError(f"{processor_dir}: expected a Siglip2ImageProcessor, found {type(processor).__name__}")
    return SiglipEncoder(model, processor)
