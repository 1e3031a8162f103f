"""The S3-DiT: transformer, Omni transformer, ControlNet, layers, attention, RoPE and its Triton kernel."""
