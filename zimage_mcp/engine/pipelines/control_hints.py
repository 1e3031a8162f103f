"""Control (hint) images: ready-made maps resized like diffusers, and optional Canny via OpenCV.

The Union ControlNets take any supported hint as an RGB picture (edges, depth, pose skeleton, ...);
the hint type changes nothing in the forward pass, it is checked against what the release was
trained on. Only Canny is computed here, and only when OpenCV is installed (``zimage-mcp[canny]``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from zimage_mcp.engine.errors import InvalidArgument

# Hint types each release was trained on (model cards of alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union*).
_UNION_V1 = ("canny", "hed", "depth", "pose", "mlsd")
_UNION_V2 = (*_UNION_V1, "scribble", "gray")
SUPPORTED_HINTS: dict[str, tuple[str, ...]] = {"v1": _UNION_V1, "2.0": _UNION_V2, "2.1": _UNION_V2, "lite": _UNION_V2}
RESAMPLE = Image.Resampling.LANCZOS  # diffusers' VaeImageProcessor default


def check_hint_type(hint: str, release: str) -> None:
    """InvalidArgument unless the ControlNet ``release`` was trained on ``hint``."""
    supported = SUPPORTED_HINTS.get(release)
    if supported is None:
        raise InvalidArgument("control", f"unknown ControlNet release {release!r}; known: {sorted(SUPPORTED_HINTS)}")
    if hint not in supported:
        raise InvalidArgument(
            "control",
            f"hint type {hint!r} is not supported by the loaded ControlNet ({release}); "
            f"supported: {', '.join(supported)}",
        )


def resize_hint(image: Image.Image, width: int, height: int) -> Image.Image:
    """RGB at (width, height), Lanczos, as ``VaeImageProcessor.preprocess(image, height, width)``."""
    return image.resize((width, height), resample=RESAMPLE).convert("RGB")


def canny_edges(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """White-on-black Canny edge map (RGB) from OpenCV's ``cv2.Canny`` on the grayscale image."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError("canny hints need OpenCV: pip install zimage-mcp[canny]") from e
    gray = np.asarray(image.convert("L"))
    edges = cv2.Canny(gray, low, high)  # (H, W) uint8 in {0, 255}
    return Image.fromarray(edges).convert("RGB")


def prepare_hint(
    image: Image.Image, hint: str, release: str, width: int, height: int, detect: bool = False
) -> Image.Image:
    """Check ``hint`` against ``release``; with ``detect`` turn a photo into the hint (Canny only), then resize."""
    check_hint_type(hint, release)
    if detect:
        if hint != "canny":
            raise InvalidArgument(
                "control", f"only canny hints can be computed here; pass a ready-made {hint} map instead"
            )
        image = canny_edges(image)
    return resize_hint(image, width, height)
