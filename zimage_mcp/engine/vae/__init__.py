"""The Flux-style AutoencoderKL: model, blocks, key dialects and tiled decoding."""
