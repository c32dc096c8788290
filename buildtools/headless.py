"""`build.py generate`: run text generation in the real page (headless Chromium, the built site served
on 127.0.0.1) and stream the reply to stdout; progress and warnings go to stderr."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from buildtools.common import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "dist" / "site"

GENERATE_PY = """
import json, js
import webformers
from webformers.generation import TextStreamer

args = json.loads({args!r})

def emit(text):
    js.wfBridge.emit({{"status": "token", "text": text}})

pipe = await webformers.pipeline("text-generation", args["model"], dtype=args["dtype"], device=args["device"])
inputs = [{{"role": "user", "content": args["prompt"]}}] if args["chat"] else args["prompt"]
streamer = TextStreamer(pipe.tokenizer, skip_prompt=True, callback_function=emit)
out = await pipe(inputs, max_new_tokens=args["max_new_tokens"], do_sample=False, streamer=streamer,
                 return_full_text=False)
stats = getattr(pipe.model, "last_generation_stats", None) or {{}}
{{"text": out[0]["generated_text"], "dtypes": getattr(pipe.model, "dtype", None),
  "device": getattr(pipe.model, "device", None), "stats": stats}}
"""


def _on_event(ev):
    status = ev.get("status")
    if status == "token":
        sys.stdout.write(ev["text"])
        sys.stdout.flush()
    elif status == "warning":
        print(f"\n[warning] {ev.get('message')}", file=sys.stderr, flush=True)
    elif status in ("initiate", "done", "ready"):
        extra = " (cached)" if ev.get("cached") else ""
        print(f"[{status}] {ev.get('file', ev.get('name', ''))}{extra}", file=sys.stderr, flush=True)


def generate(args) -> int:
    from playwright.sync_api import sync_playwright

    from buildtools.server import serve

    srv = serve(SITE)
    t0 = time.time()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page()
            page.expose_function("wfOnEvent", _on_event)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url + "/index.html")
            page.wait_for_function("window.wf && (window.wf.timings || window.wf.bootError)", timeout=180_000)
            err = page.evaluate("window.wf.bootError")
            if err:
                print(f"boot failed: {err}", file=sys.stderr)
                return 1
            timings = page.evaluate("window.wf.timings")
            print(f"[boot] {json.dumps(timings)}", file=sys.stderr, flush=True)
            page.evaluate("window.wf.addEventListener('wf-event', (e) => window.wfOnEvent(e.detail))")
            code = GENERATE_PY.format(args=json.dumps({
                "model": args.model, "dtype": args.dtype, "device": args.device, "prompt": args.prompt,
                "max_new_tokens": args.max_new_tokens, "chat": args.chat}))
            page.set_default_timeout(1_800_000)
            try:
                res = page.evaluate("code => window.wf.runPython(code)", code)
            except Exception as e:  # the Python error text is in the message
                print(f"\ngeneration failed: {e}", file=sys.stderr)
                return 1
            sys.stdout.write("\n")
            print(f"[done] dtypes={res.get('dtypes')} device={res.get('device')} "
                  f"stats={json.dumps(res.get('stats'))} total={time.time() - t0:.1f}s", file=sys.stderr)
            browser.close()
    finally:
        srv.stop()
    return 0
