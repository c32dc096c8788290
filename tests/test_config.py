"""webformers.configure on CPython: validation, events to callbacks and async iterators (from a real load's
LoadEvents), the configured stop source behind platform.stop_requested and generation's cancel."""
from __future__ import annotations

import asyncio

import pytest

from helpers import run_async
from webformers import config, platform
from webformers.store.events import LoadEvents


@pytest.fixture(autouse=True)
def fresh_config():
    config.reset()
    yield
    config.reset()


def test_configure_validates_and_reports():
    s = config.configure(assets="/static/wf", models="https://example.org/{model}/resolve/{revision}/{file}",
                         threads=2)
    assert s["assets"] == "/static/wf/" and s["threads"] == 2
    assert s["models"] == "https://example.org/{model}/resolve/{revision}/{file}"
    assert platform.default_host() is None or isinstance(platform.default_host(), str)  # CPython: $WEBFORMERS_HOST
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        config.configure(threads=0)
    with pytest.raises(TypeError, match="on_event must be callable"):
        config.configure(on_event="print")
    with pytest.raises(TypeError, match="stop must have an is_set"):
        config.configure(stop=3)
    # once onnxruntime-web has started, what it was started with is fixed
    config._started = {"assets": "/static/wf/", "threads": 2, "ort_worker": None}
    try:
        config.configure(assets="/static/wf/", threads=2)  # the same values are fine
        with pytest.raises(ValueError, match="threads cannot change once onnxruntime-web has started"):
            config.configure(threads=1)
    finally:
        config._started = None


def test_events_reach_callbacks_and_iterators():
    async def main():
        got, agot = [], []

        async def acb(ev):
            agot.append(ev["status"])

        config.configure(on_event=got.append)
        config.configure(on_event=acb)
        stream = config.events(until={"ready"})
        only_done = config.events(statuses={"done"}, until={"ready"})
        ev = LoadEvents("m", sizes={"a.onnx": 10})
        await ev.file_event("progress", "a.onnx", 5, 10, False)
        await ev.warning("slow", file="a.onnx")
        await ev.file_event("done", "a.onnx", 10, 10, False)
        await ev.ready()
        await asyncio.sleep(0)  # the async callback runs as a task
        streamed = [e["status"] async for e in stream]
        done = [e["status"] async for e in only_done]
        late = config.events()  # made after the events: sees none of them
        late.close()
        return got, agot, streamed, done, [e async for e in late]

    got, agot, streamed, done, late = run_async(main())
    statuses = ["progress", "warning", "done", "ready"]
    assert [e["status"] for e in got] == statuses and agot == statuses and streamed == statuses
    assert got[1]["message"] == "slow" and got[-1]["overall"] == {"loaded": 10, "total": 10}
    assert done == ["done", "ready"] and late == []
    assert not config._streams  # the iterators that ended are unsubscribed


def test_stop_source_drives_stop_requested_and_cancel():
    from webformers.generation.stopping import CancelCriteria

    async def main():
        ev = asyncio.Event()
        config.configure(stop=ev)
        before = platform.stop_requested()
        crit = CancelCriteria(platform.stop_requested)
        ev.set()
        after = platform.stop_requested(), crit(0, 1)
        platform.reset_stop()
        flag = [False]
        config.configure(stop=lambda: flag[0])
        flag[0] = True
        return before, after, ev.is_set(), platform.stop_requested()

    before, after, still_set, callable_stop = run_async(main())
    assert before is False and after == (True, "cancelled") and still_set is False and callable_stop is True


def _tiny_tokenizer():
    import json

    from helpers import SITE
    from webformers.text.tokenizer import Tokenizer
    repo = SITE / "models" / "webformers" / "tiny-random-llama"
    if not (repo / "tokenizer.json").exists():
        pytest.fail(f"{repo} is not built: run `python3 build.py build`")
    return Tokenizer.from_json((repo / "tokenizer.json").read_text(),
                               json.loads((repo / "tokenizer_config.json").read_text()))


def test_event_streamer_and_async_callback():
    from webformers import EventStreamer, TextStreamer

    tok = _tiny_tokenizer()
    ids = tok.encode(" the little dog ran home", add_special_tokens=False)

    async def main():
        stream = config.events(statuses={"token"}, until={"stream-end"})
        s = EventStreamer(tok, extra={"name": "tiny"})
        s.put([[1, 2]])  # the prompt: skipped
        for t in ids:
            s.put(t)
        s.end()
        events = [e async for e in stream]
        got = []

        async def cb(text):
            got.append(text)

        ts = TextStreamer(tok, skip_prompt=True, callback_function=cb)
        ts.put([[1]])
        for t in ids:
            ts.put(t)
        ts.end()
        await asyncio.sleep(0)
        return events, got, ts.text

    events, got, text = run_async(main())
    want = tok.decode(ids, skip_special_tokens=True)
    assert events[-1] == {"name": "tiny", "status": "stream-end", "text": want}
    assert all(e["status"] == "token" and e["name"] == "tiny" for e in events[:-1]) and len(events) >= 3
    assert "".join(e["text"] for e in events[:-1]) == want
    assert "".join(got) == text == want
