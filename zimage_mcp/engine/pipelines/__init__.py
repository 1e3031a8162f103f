"""Sampling: the sampler, text-to-image, img2img/inpaint, ControlNet, Omni, step cache, argument rules."""
