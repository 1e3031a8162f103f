"""Built-in plugin: the registry.toml variants whose `plugin` is "zimage_base".

Z-Image, the Base model (CFG, negative prompts, 28-50 steps).

The variants' defaults, limits, capabilities and weights are catalogue data; the engine is imported
lazily by the factory, on first use.
"""

from zimage_catalog_variants import variant_hook

PLUGIN = "zimage_base"
zimage_register_variants = variant_hook(PLUGIN)
