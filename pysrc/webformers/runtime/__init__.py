"""Running a model: the session seam (``backend``: onnxruntime-web in Pyodide, onnxruntime on CPython),
the per-module dtype plan and the session loader (``load``), warm start.
"""
