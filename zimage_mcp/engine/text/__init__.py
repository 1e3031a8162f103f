"""Prompt and image encoders: Qwen3 text encoder glue, SigLIP2, Omni prompt segments."""
