"""Scale-out on Ray Serve: one MCP front, N engine replicas (``zimage-mcp serve --transport http --ray``).

``config`` turns the ``[ray]`` table into deployment options (no ray import); ``replica`` is the Serve
deployment that owns a registry and the engine; ``proxy`` is the front's ``RayBackend`` and ``RayRegistry``;
``stats`` counts per-replica queue depth and latency; ``cluster`` starts or joins Ray and deploys.
Nothing here is imported unless ``--ray`` is given.
"""
