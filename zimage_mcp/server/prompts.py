"""MCP prompts: short recipes a user can pick in the host to drive the image tools well.

Each returns one user message that tells the assistant which tools to call with which settings.
Unknown prompt names and bad prompt arguments are answered with JSON-RPC -32602 by
``ZImageServer.get_prompt``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mcp.server import MCPServer

PROMPT_NAMES = ("iterate_on_image", "product_shot", "explore_variations")


def iterate_on_image(image_id: str, goal: str) -> str:
    """Refine an existing image step by step with edit_image until it meets a goal."""
    return f"""Refine the image {image_id} (zimage://images/{image_id}) until it meets this goal: {goal}

Work in small steps:
1. Read zimage://images/{image_id}/metadata to learn its prompt, model, seed and size.
2. Name the single biggest difference between the image and the goal.
3. Call edit_image with image="{image_id}" and a prompt that describes the whole desired picture
   (not only the change). For img2img use strength 0.3-0.5 for small fixes and 0.6-0.8 for bigger
   changes; keep the seed to change one thing at a time. With an edit variant (list_models shows
   edit_modes ["reference"]) give an instruction instead and leave strength and mask out.
4. Look at the preview, compare with the goal, and repeat from step 2 with the new image id.
5. Stop after at most 5 edits, or when the goal is met, and report the final image path and id.
If an edit makes things worse, go back to the previous id instead of stacking fixes."""


def product_shot(product: str, background: str = "seamless white studio backdrop") -> str:
    """A clean e-commerce product photo with generate_image: prompt recipe and settings."""
    return f"""Make a clean product photo of: {product}

Call generate_image with:
- prompt: "Professional studio product photograph of {product}, centered, on a {background}, soft
  diffused key light with a gentle fill, subtle natural shadow under the product, sharp focus,
  true-to-life colors, high detail, commercial catalogue style, no text, no watermark"
- width 1024, height 1024 (or 1024x1280 for a tall product), count 2 to compare, and a fixed seed
  so a good result can be repeated; leave steps and guidance at the variant defaults.
- output_format "png" (lossless, for later editing).
Pick the better image. If the product shape or label is off, fix it with edit_image (img2img,
strength 0.3-0.45) rather than regenerating, and keep the same background wording."""


def explore_variations(subject: str, styles: str = "photo, watercolor, 3D render, line art") -> str:
    """Try one subject in several styles with fixed seeds, then refine the favourite."""
    return f"""Explore visual styles for: {subject}

For each style in [{styles}], call generate_image once with prompt "{subject}, <style>" and the
same seed for every style (pick one, e.g. 42) at 1024x1024 with preview "thumbnail". Keep other
settings at the variant defaults so only the style changes. Then show the results side by side
(list the image ids and paths), ask which one to keep, and refine that one with edit_image."""


def register_prompts(mcp: MCPServer) -> None:
    for fn, title in (
        (iterate_on_image, "Iterate on an image"),
        (product_shot, "Product shot"),
        (explore_variations, "Explore styles"),
    ):
        mcp.prompt(name=fn.__name__, title=title, description=fn.__doc__)(fn)
