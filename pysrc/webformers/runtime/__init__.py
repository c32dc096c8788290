"""Running a model.

- ``backend``: the session seam (onnxruntime-web in Pyodide, onnxruntime on CPython), warm start;
- ``plan``: which device and which dtype per module (``select_dtypes``, no I/O; ``check_dtype_arg``);
- ``load``: ``load_sessions`` - plan, fetch the files through the store, create (or adopt warm-started)
  sessions;
- ``forms``: the execution form per module (``execution="auto"|"native"|"fp32"``, ``max_memory``; no I/O);
- ``exec_form``: the fp32 form's graph rewrite with onnx (CPython; the reference of ``webformers/assets/exec-form.js``);
- ``onnx_info``: ``onnx_output_names``, ``quantized_matmul_weights`` from an ONNX model's bytes, without onnx.
"""
