"""The transformers.js / onnx-community repo layout, as far as the store needs it.

- ``repo_modules(config)``: the ONNX modules a repo has, from its config.json;
- ``group_variants(paths, modules)``: ``{module: {dtype: [model file, its external data files]}}`` from a
  list of repo paths (``onnx/{module}{suffix}.onnx`` plus ``.onnx_data``, ``.onnx_data_1``, ...);
- ``data_chunks(config, path, module)`` / ``data_files(path, chunks)``: the external data files that
  ``transformers.js_config.use_external_data_format`` names for a model file;
- ``config_defaults(config)``: the default ``dtype`` / ``device`` that ``transformers.js_config`` names,
  checked (``(defaults, notes)``: what was ignored and why).
"""
from __future__ import annotations

from collections.abc import Mapping

from ..dtypes import DTYPES, dtype_of_file, get_dtype

__all__ = ["TJS_CONFIG", "MAX_DATA_CHUNKS", "repo_modules", "group_variants", "data_chunks", "data_files",
           "config_defaults"]

#: the config.json key holding transformers.js' loading options
TJS_CONFIG = "transformers.js_config"
#: at most this many external data files per model file (as transformers.js)
MAX_DATA_CHUNKS = 100

#: transformers.js device names -> the webformers device that runs them (None: no preference)
_DEVICES = {"webgpu": "webgpu", "gpu": "webgpu", "wasm": "wasm", "cpu": "wasm", "auto": None}


def repo_modules(config: dict) -> list[str]:
    """The modules of a transformers.js-layout repo: ``encoder_model`` + ``decoder_model_merged`` for an
    encoder-decoder config (``is_encoder_decoder``, e.g. Whisper), else ``model`` (decoder-only LMs,
    encoders)."""
    if config.get("is_encoder_decoder"):
        return ["encoder_model", "decoder_model_merged"]
    return ["model"]


def _is_data_of(path: str, model_path: str) -> bool:
    rest = path[len(model_path):] if path.startswith(model_path) else None
    if rest is None:
        return False
    if rest == "_data" or rest == ".data":
        return True
    return rest.startswith("_data_") and rest[len("_data_"):].isdigit()


def group_variants(paths, modules) -> dict[str, dict[str, list[str]]]:
    """``{module: {dtype: [model file, *its external data files]}}`` for the model files among ``paths``
    (dtypes in registry order, data files in chunk order)."""
    paths = list(paths)
    out: dict[str, dict[str, list[str]]] = {m: {} for m in modules}
    for p in paths:
        md = dtype_of_file(p, modules)
        if md is None:
            continue
        data = sorted((f for f in paths if _is_data_of(f, p)), key=lambda f: (len(f), f))
        out[md[0]][md[1]] = [p, *data]
    order = list(DTYPES)
    return {m: dict(sorted(v.items(), key=lambda kv: order.index(kv[0]))) for m, v in out.items()}


def data_chunks(config: dict, path: str, module: str) -> int | None:
    """How many external data files ``use_external_data_format`` in ``transformers.js_config`` gives the
    model file ``path`` of ``module``: a bool or a number for every file, or ``{file name or module:
    bool/number}``. None when the config does not say."""
    value = (config.get(TJS_CONFIG) or {}).get("use_external_data_format")
    if isinstance(value, Mapping):
        name = path.rsplit("/", 1)[-1]
        value = value.get(name, value.get(module))
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, int) or not 0 <= value <= MAX_DATA_CHUNKS:
        raise ValueError(f"{TJS_CONFIG}.use_external_data_format for {path} must be a bool or a number of "
                         f"files from 0 to {MAX_DATA_CHUNKS}, got {value!r}")
    return value


def data_files(path: str, chunks: int) -> list[str]:
    """The external data files of the model file ``path`` stored in ``chunks`` files:
    ``{path}_data``, ``{path}_data_1``, ..."""
    return [f"{path}_data" + ("" if i == 0 else f"_{i}") for i in range(chunks)]


def config_defaults(config: dict) -> tuple[dict, list[str]]:
    """``({"dtype": name or {module: name}, "device": "webgpu" | "wasm"}, notes)`` from
    ``transformers.js_config`` (keys it does not name are left out); ``notes`` say which values were
    ignored (unknown dtypes, devices webformers has no backend for, per-module devices that differ)."""
    tjs = config.get(TJS_CONFIG) or {}
    out: dict = {}
    notes: list[str] = []
    dtype = tjs.get("dtype")
    if isinstance(dtype, str):
        try:
            out["dtype"] = get_dtype(dtype).name
        except ValueError as e:
            notes.append(f"{TJS_CONFIG}.dtype ignored: {e}")
    elif isinstance(dtype, Mapping):
        per = {}
        for module, name in dtype.items():
            try:
                per[module] = get_dtype(name).name
            except ValueError as e:
                notes.append(f"{TJS_CONFIG}.dtype of {module} ignored: {e}")
        if per:
            out["dtype"] = per
    elif dtype is not None:
        notes.append(f"{TJS_CONFIG}.dtype ignored: expected a dtype name or a {{module: dtype}} mapping, "
                     f"got {dtype!r}")
    device = tjs.get("device")
    if isinstance(device, Mapping):
        names = set(device.values())
        if len(names) > 1:
            notes.append(f"{TJS_CONFIG}.device ignored: webformers runs every module on one device, the "
                         f"config names {', '.join(sorted(map(str, names)))}")
            device = None
        else:
            device = next(iter(names), None)
    if device is not None:
        if device in _DEVICES:
            if _DEVICES[device] is not None:
                out["device"] = _DEVICES[device]
        else:
            notes.append(f"{TJS_CONFIG}.device {device!r} ignored: webformers runs on "
                         f"{', '.join(n for n in _DEVICES if n != 'auto')}")
    return out, notes
