"""Weights on disk: safetensors reading and strict loading, layouts, component loaders, LoRA, fp8."""
