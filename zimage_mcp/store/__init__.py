"""The image store: saved images, their parameters and a restart-proof index (``image_store.py``)."""

from zimage_mcp.store.image_store import FORMATS, ID_PATTERN, ImageStore, StoredImage, atomic_write

__all__ = ["FORMATS", "ID_PATTERN", "ImageStore", "StoredImage", "atomic_write"]
