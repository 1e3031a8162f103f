"""Speed settings: optimize/compile, CUDA graphs, warm-up."""
