"""Embedding runtimes, one module each, chosen by :func:`models.runtimes.factory.open_embedder`.

- :mod:`~models.runtimes.onnx`: ONNX Runtime on the CPU (no torch import), the default there.
- :mod:`~models.runtimes.onnx_export`: writes the ONNX graph that runtime reads (torch).
- :mod:`~models.runtimes.eager`: eager PyTorch, the default on CUDA and the reference.
"""
