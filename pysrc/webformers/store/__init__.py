"""The model store: a model repo's files fetched, verified against its manifest and cached.

``repo`` (``ModelRepo``: open, verify every read, heal, one download per URL), ``manifest`` (the
``onnx/manifest.json`` format).
"""
