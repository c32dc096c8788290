"""Low-bit (1/2/4-bit) weights for the decoder variants: calibrated post-training quantization (GPTQ on
fitted block grids), quantization-aware training, the 1-bit (Bonsai "q1") graph layout and per-layer bit
budgets.

- :mod:`.grid` — block grids (scales / zero points as the file stores them), rounding, packing;
- :mod:`.gptq` — ``gptq_quantize(w, H, bits)``; :mod:`.calibrate` — ``collect_hessians``, sequential ``gptq_model``;
- :mod:`.corpus` — calibration text (stdlib docstrings disjoint from the report's held-out text);
- :mod:`.qat` — ``qat(model, bits, steps, ...)``: straight-through fine-tuning distilled from the fp32 model;
- :mod:`.budget` — per-layer sensitivity and ``choose_bits`` (bits per layer under a byte budget);
- :mod:`.mapping` — torch Linear names ↔ ONNX MatMul initializers; :mod:`.graph` — writing the weights into
  the graph (MatMulNBits layouts, the 1-bit expansion, the shared token table); :mod:`.variant` — dtype recipes;
- :mod:`.measure` — KL / top-1 against fp32 (onnxruntime or torch).
"""
