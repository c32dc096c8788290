"""Running a model.

- ``backend``: the session seam (onnxruntime-web in Pyodide, onnxruntime on CPython), warm start;
- ``plan``: which device and which dtype per module (``select_dtypes``, no I/O; ``check_dtype_arg``);
- ``load``: ``load_sessions`` - plan, fetch the files through the store, create (or adopt warm-started)
  sessions;
- ``onnx_info``: ``onnx_output_names`` from an ONNX model's bytes, without onnx.
"""
