"""The default app of a `webformers site`: a chat with the site's text-generation models.

Runs in Pyodide on the page's main thread (site-loader.js runs it once webformers is installed). It
builds its controls in ``<main id="app">``: a model and dtype choice, a prompt, Send and Stop; the reply
streams in as it is generated. The models come from the site's ``models/index.json``. Page options in
the query string: ``?device=wasm|webgpu|auto`` (default auto) and ``?max_new_tokens=N`` (default 128).
"""
import asyncio
import json

import js
from pyodide.ffi import create_proxy
from pyodide.http import pyfetch

import webformers

doc = js.document
root = doc.getElementById("app")
params = js.URLSearchParams.new(js.location.search)
DEVICE = params.get("device") or "auto"
MAX_NEW_TOKENS = int(params.get("max_new_tokens") or 128)


def el(tag, parent=None, text=None, **attrs):
    node = doc.createElement(tag)
    if text is not None:
        node.textContent = text
    for k, v in attrs.items():
        node.setAttribute(k.rstrip("_"), v)
    (parent or root).appendChild(node)
    return node


index = await (await pyfetch("models/index.json")).json()  # noqa: F704 (top-level await: Pyodide)
models = [m for m in index["models"] if m["task"] == "text-generation"]

if not models:
    el("p", text="This site has no text-generation model: build it with `webformers site OUT --model REPO_DIR`.")
else:
    el("label", text="Model", for_="wf-model")
    model_box = el("select", id="wf-model")
    for m in models:
        el("option", model_box, m["id"], value=m["id"])
    el("label", text="dtype", for_="wf-dtype")
    dtype_box = el("select", id="wf-dtype")
    el("label", text="Prompt", for_="wf-prompt")
    prompt_box = el("textarea", id="wf-prompt")
    prompt_box.value = "What is the capital of France?"
    send = el("button", text="Send", id="wf-send")
    stop = el("button", text="Stop", id="wf-stop")
    stop.disabled = True
    reply = el("div", id="wf-reply", class_="wf-reply")
    info = el("div", id="wf-info", class_="wf-info")

    def fill_dtypes(*_):
        m = next(m for m in models if m["id"] == model_box.value)
        dtype_box.innerHTML = ""
        for d in m["modules"]["model"]:
            el("option", dtype_box, f"{d} ({m['bytes']['model'][d] / 1e6:.1f} MB)", value=d)

    fill_dtypes()
    model_box.addEventListener("change", create_proxy(fill_dtypes))

    pipes = {}
    cancel = asyncio.Event()

    def progress(event):
        if event.get("status") == "progress" and event.get("total"):
            info.textContent = f"Loading {event.get('file', '')}: {100 * event['loaded'] / event['total']:.0f} %"

    async def on_send(*_):
        key = (model_box.value, dtype_box.value)
        send.disabled = True
        stop.disabled = False
        cancel.clear()
        reply.textContent = ""
        try:
            if key not in pipes:
                info.textContent = f"Loading {key[0]} ({key[1]})…"
                pipes[key] = await webformers.pipeline("text-generation", key[0], dtype=key[1],
                                                       device=DEVICE, progress_callback=progress)
            pipe = pipes[key]
            chat = [{"role": "user", "content": prompt_box.value}]
            prompt = chat if getattr(pipe.tokenizer, "chat_template", None) else prompt_box.value
            streamer = webformers.TextStreamer(pipe.tokenizer, skip_prompt=True,
                                               callback_function=lambda text: reply.append(text))
            info.textContent = "Generating…"
            out = await pipe(prompt, max_new_tokens=MAX_NEW_TOKENS, streamer=streamer, cancel=cancel,
                             return_full_text=isinstance(prompt, list))
            text = out[0]["generated_text"]
            reply.textContent = text[-1]["content"] if isinstance(text, list) else text
            info.textContent = "Stopped." if cancel.is_set() else ""
        except Exception as e:  # shown on the page; the app keeps running
            info.textContent = f"{type(e).__name__}: {e}"
        finally:
            send.disabled = False
            stop.disabled = True

    send.addEventListener("click", create_proxy(on_send))
    stop.addEventListener("click", create_proxy(lambda *_: cancel.set()))
