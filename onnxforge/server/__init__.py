"""onnxforge's server: the Open Inference Protocol on ONNX Runtime, in layers.

``builds`` (a served repository's specs) → ``model_version`` (session, threads, batcher) →
``registry`` (load, unload, get) → ``dataplane`` (what is answered, no transport) →
``service`` (the gRPC transport). ``app.create_server`` assembles them.
"""

__all__: list[str] = []
