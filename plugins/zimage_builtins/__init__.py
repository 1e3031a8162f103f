"""The built-in plugins, registered exactly as third-party ones are (entry-point group ``zimage_mcp``).

- ``engine_variants`` (plugin ``zimage_engine``): the registry.toml variants that run on our engine.
- ``lora_dir`` (plugin ``zimage_lora_dir``): every ``.safetensors`` file in the LoRA folder.
- ``engine_backend``: the bridge to the engine, imported only inside the factory, on first use.
"""
