"""Fixture app for tests/test_site.py: a text box and a button, written with js / pyodide.ffi.

The page's query string names the model and dtype (?model=ID&dtype=q4&n=8). Clicking "Generate" encodes
the text box, generates n tokens greedily and writes the prompt's token ids and the new ones as JSON to
#tokens, the new text to #out.
"""
import json

import js
from pyodide.ffi import create_proxy

from webformers import AutoModelForCausalLM, AutoTokenizer

params = js.URLSearchParams.new(js.location.search)
MODEL = params.get("model")
DTYPE = params.get("dtype") or "q4"
N = int(params.get("n") or 8)

doc = js.document
box = doc.createElement("input")
box.id = "prompt"
box.value = "Once upon a time"
button = doc.createElement("button")
button.id = "go"
button.textContent = "Generate"
out = doc.createElement("pre")
out.id = "out"
tokens = doc.createElement("pre")
tokens.id = "tokens"
for node in (box, button, out, tokens):
    doc.body.appendChild(node)

loaded = {}


async def generate(*_):
    button.disabled = True
    try:
        if "model" not in loaded:
            loaded["tok"] = await AutoTokenizer.from_pretrained(MODEL)
            loaded["model"] = await AutoModelForCausalLM.from_pretrained(MODEL, dtype=DTYPE, device="wasm")
        tok, model = loaded["tok"], loaded["model"]
        prompt = list(tok.encode(box.value))
        ids = (await model.generate(prompt, max_new_tokens=N, eos_token_id=None))[0].tolist()
        out.textContent = tok.decode(ids[len(prompt):], skip_special_tokens=True)
        tokens.textContent = json.dumps({"prompt": prompt, "new": ids[len(prompt):]})
    except Exception as e:
        tokens.textContent = json.dumps({"error": f"{type(e).__name__}: {e}"})
    finally:
        button.disabled = False


button.addEventListener("click", create_proxy(generate))
