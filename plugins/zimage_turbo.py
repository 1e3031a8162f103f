"""Built-in plugin: the registry.toml variants whose `plugin` is "zimage_turbo".

Z-Image-Turbo (distilled, 8 steps, no CFG).

The variants' defaults, limits, capabilities and weights are catalogue data; the engine is imported
lazily by the factory, on first use.
"""

from zimage_catalog_variants import variant_hook

PLUGIN = "zimage_turbo"
zimage_register_variants = variant_hook(PLUGIN)
