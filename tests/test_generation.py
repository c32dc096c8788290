"""Generation: logits processors, sampling, stopping, streaming, the KV-cache loop (CPython).

Loop tests run on a small numpy decoder with a real attention KV cache (``NumpyDecoder``: the same
I/O as the exported ONNX decoders) and, when the toolchain is importable, on the tiny random Llama
built by ``webformers.toolchain.build_demo_models`` through onnxruntime.
"""
from __future__ import annotations

import asyncio
import importlib.util

import numpy as np
import pytest
from helpers import run_async

from webformers.generation import (
    GenerationConfig, LogitsProcessorList, MinNewTokensLengthLogitsProcessor, MinPLogitsWarper,
    NoBadWordsLogitsProcessor, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor, SuppressTokensLogitsProcessor, TemperatureLogitsWarper,
    TextIteratorStreamer, TextStreamer, TopKLogitsWarper, TopPLogitsWarper, build_logits_processor,
    sample_next_token,
)
from webformers.generation.loop import ContextLengthError
from webformers.generation.stopping import StopStrings
from webformers.text.causal_lm import CausalLM
from webformers.text.tokenizer import TokenStreamDecoder

NEG = -np.inf


def run(coro):
    return run_async(coro)  # not asyncio.run: a Playwright fixture may own this thread's loop


# =============================================================================================
# processors against hand-computed values
# =============================================================================================
def test_temperature():
    out = TemperatureLogitsWarper(2.0)(np.array([[0]]), np.array([[1.0, 2.0, -3.0]], np.float32))
    np.testing.assert_allclose(out, [[0.5, 1.0, -1.5]])


def test_top_k_keeps_k_and_ties():
    out = TopKLogitsWarper(2)(np.array([[0]]), np.array([[1.0, 3.0, 2.0, 0.0]]))
    assert out.tolist() == [[NEG, 3.0, 2.0, NEG]]
    out = TopKLogitsWarper(1)(np.array([[0]]), np.array([[1.0, 3.0, 3.0, 0.0]]))
    assert out.tolist() == [[NEG, 3.0, 3.0, NEG]]


def test_top_p_nucleus():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    keep = lambda p: np.isfinite(TopPLogitsWarper(p)(np.array([[0]]), logits))[0].tolist()  # noqa: E731
    assert keep(0.5) == [True, False, False, False]
    assert keep(0.6) == [True, True, False, False]
    assert keep(0.81) == [True, True, True, False]
    assert keep(1.0) == [True, True, True, True]
    # order in the vocabulary does not matter
    shuffled = np.log(np.array([[0.15, 0.05, 0.5, 0.3]]))
    assert np.isfinite(TopPLogitsWarper(0.6)(np.array([[0]]), shuffled))[0].tolist() == [False, False, True, True]


def test_min_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    assert np.isfinite(MinPLogitsWarper(0.5)(np.array([[0]]), logits))[0].tolist() == [True, True, False, False]
    assert np.isfinite(MinPLogitsWarper(0.2)(np.array([[0]]), logits))[0].tolist() == [True, True, True, False]


def test_repetition_penalty():
    out = RepetitionPenaltyLogitsProcessor(2.0)(np.array([[0, 1, 1]]), np.array([[2.0, -2.0, 1.0, 0.5]]))
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]


def test_no_repeat_ngram():
    sc = np.zeros((1, 6))
    out = NoRepeatNGramLogitsProcessor(2)(np.array([[1, 2, 3, 1]]), sc)
    assert np.where(~np.isfinite(out[0]))[0].tolist() == [2]
    out = NoRepeatNGramLogitsProcessor(3)(np.array([[1, 2, 3, 1, 2]]), sc)
    assert np.where(~np.isfinite(out[0]))[0].tolist() == [3]
    out = NoRepeatNGramLogitsProcessor(3)(np.array([[1, 2, 3, 4, 2]]), sc)
    assert np.isfinite(out).all()
    # size 1: every token already present is banned
    out = NoRepeatNGramLogitsProcessor(1)(np.array([[0, 4]]), sc)
    assert np.where(~np.isfinite(out[0]))[0].tolist() == [0, 4]


def test_bad_words():
    p = NoBadWordsLogitsProcessor([[3], [1, 2], [4, 5, 0]])
    sc = np.zeros((1, 6))
    assert np.where(~np.isfinite(p(np.array([[0, 1]]), sc)[0]))[0].tolist() == [2, 3]
    assert np.where(~np.isfinite(p(np.array([[0, 0]]), sc)[0]))[0].tolist() == [3]
    assert np.where(~np.isfinite(p(np.array([[4, 5]]), sc)[0]))[0].tolist() == [0, 3]


def test_suppress_tokens():
    out = SuppressTokensLogitsProcessor([0, 2])(np.array([[1]]), np.array([[1.0, 1.0, 1.0]]))
    assert out.tolist() == [[NEG, 1.0, NEG]]


def test_suppress_tokens_at_begin_only_for_the_first_new_token():
    p = SuppressTokensAtBeginLogitsProcessor([0, 2, 99], begin_index=3)
    sc = np.ones((1, 3))
    assert p(np.zeros((1, 3), np.int64), sc).tolist() == [[NEG, 1.0, NEG]]
    assert p(np.zeros((1, 4), np.int64), sc).tolist() == [[1.0, 1.0, 1.0]]
    names = [type(q).__name__ for q in build_logits_processor(GenerationConfig(begin_suppress_tokens=[5]), 7)]
    assert names == ["SuppressTokensAtBeginLogitsProcessor"]
    with pytest.raises(ValueError, match="begin_suppress_tokens"):
        GenerationConfig(begin_suppress_tokens=[-1]).validate()


def test_min_new_tokens():
    p = MinNewTokensLengthLogitsProcessor(prompt_length=3, min_new_tokens=2, eos_token_id=[1, 4])
    sc = np.zeros((1, 5))
    assert np.where(~np.isfinite(p(np.zeros((1, 4), np.int64), sc)[0]))[0].tolist() == [1, 4]
    assert np.isfinite(p(np.zeros((1, 5), np.int64), sc)).all()


def test_processors_do_not_modify_inputs_and_chain():
    sc = np.array([[1.0, 2.0, 3.0, 4.0]])
    lst = LogitsProcessorList([SuppressTokensLogitsProcessor([3]), TopKLogitsWarper(1)])
    out = lst(np.array([[0]]), sc)
    assert sc.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert out.tolist() == [[NEG, NEG, 3.0, NEG]]


def test_build_logits_processor_applies_every_control():
    cfg = GenerationConfig(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, min_p=0.05,
                           repetition_penalty=1.3, no_repeat_ngram_size=3, bad_words_ids=[[1]],
                           suppress_tokens=[2], min_new_tokens=2, eos_token_id=0)
    names = [type(p).__name__ for p in build_logits_processor(cfg, 4)]
    assert names == ["RepetitionPenaltyLogitsProcessor", "NoRepeatNGramLogitsProcessor",
                     "NoBadWordsLogitsProcessor", "MinNewTokensLengthLogitsProcessor",
                     "SuppressTokensLogitsProcessor", "TemperatureLogitsWarper", "TopKLogitsWarper",
                     "TopPLogitsWarper", "MinPLogitsWarper"]
    # warpers only act when sampling
    greedy = [type(p).__name__ for p in build_logits_processor(cfg.update(do_sample=False), 4)]
    assert "TopKLogitsWarper" not in greedy and "RepetitionPenaltyLogitsProcessor" in greedy


# =============================================================================================
# sampling statistics (fixed seeds)
# =============================================================================================
P5 = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
L5 = np.log(P5)[None]


def _draws(procs, n=6000, seed=0):
    rng = np.random.default_rng(seed)
    sc = procs(np.array([[0]]), L5)
    return np.array([sample_next_token(sc, rng)[0] for _ in range(n)])


def test_unfiltered_sampling_matches_distribution():
    d = _draws(LogitsProcessorList())
    freq = np.bincount(d, minlength=5) / len(d)
    np.testing.assert_allclose(freq, P5, atol=0.025)


def test_top_p_never_draws_outside_nucleus():
    d = _draws(LogitsProcessorList([TopPLogitsWarper(0.5)]), n=10000, seed=1)
    assert set(d.tolist()) == {0, 1}  # nucleus of 0.5: 0.3 + 0.25
    assert abs((d == 0).mean() - 0.3 / 0.55) < 0.025


def test_top_k_distribution():
    d = _draws(LogitsProcessorList([TopKLogitsWarper(3)]), seed=2)
    assert set(d.tolist()) == {0, 1, 2}
    np.testing.assert_allclose(np.bincount(d, minlength=5)[:3] / len(d), P5[:3] / P5[:3].sum(), atol=0.025)


def test_min_p_distribution():
    d = _draws(LogitsProcessorList([MinPLogitsWarper(0.6)]), seed=3)  # threshold 0.18
    assert set(d.tolist()) == {0, 1, 2}


def test_temperature_changes_distribution():
    for t in (0.5, 2.0):
        d = _draws(LogitsProcessorList([TemperatureLogitsWarper(t)]), seed=4)
        expect = P5 ** (1 / t) / (P5 ** (1 / t)).sum()
        np.testing.assert_allclose(np.bincount(d, minlength=5) / len(d), expect, atol=0.025)
    cold = (_draws(LogitsProcessorList([TemperatureLogitsWarper(0.5)]), seed=5) == 0).mean()
    hot = (_draws(LogitsProcessorList([TemperatureLogitsWarper(2.0)]), seed=5) == 0).mean()
    assert cold > 0.38 > 0.3 > 0.26 > hot


def test_seeded_sampling_is_reproducible():
    a = _draws(LogitsProcessorList(), n=200, seed=42)
    b = _draws(LogitsProcessorList(), n=200, seed=42)
    c = _draws(LogitsProcessorList(), n=200, seed=43)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_all_filtered_is_a_clear_error():
    with pytest.raises(ValueError, match="filtered out"):
        sample_next_token(np.full((1, 3), -np.inf), np.random.default_rng(0))


# =============================================================================================
# GenerationConfig
# =============================================================================================
def test_config_from_hub_file_and_kwargs():
    cfg = GenerationConfig.from_dict({"bos_token_id": 1, "eos_token_id": [2, 3], "do_sample": True,
                                      "temperature": 0.2, "transformers_version": "4.1"})
    assert cfg.eos_token_ids == [2, 3] and cfg.do_sample and cfg.extra["bos_token_id"] == 1
    c2 = cfg.update(max_new_tokens=5, top_p=0.9)
    assert c2.max_new_tokens == 5 and cfg.max_new_tokens == 20


def test_config_unknown_kwarg_lists_valid_names():
    with pytest.raises(TypeError) as e:
        GenerationConfig().update(max_tokens=5)
    assert "'max_tokens'" in str(e.value) and "max_new_tokens" in str(e.value) and "stop_strings" in str(e.value)


@pytest.mark.parametrize("kw", [{"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}, {"min_p": 2},
                                {"do_sample": True, "temperature": 0}, {"repetition_penalty": 0},
                                {"bad_words_ids": [1, 2]}, {"stop_strings": ""}, {"max_new_tokens": -1},
                                {"max_time": 0}, {"eos_token_id": "x"}])
def test_config_bad_values(kw):
    with pytest.raises(ValueError, match="generation argument"):
        GenerationConfig().update(**kw)


# =============================================================================================
# a byte-level tokenizer and a numpy decoder with a real KV cache
# =============================================================================================
class ByteTokenizer:
    """ids 0..255 are bytes; 256 = <eos>, 257 = <bos> (special)."""
    eos_token_id = 256
    vocab_size = 258

    def encode(self, text, add_special_tokens=True):
        return ([257] if add_special_tokens else []) + list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=False):
        out = bytearray()
        for i in ids:
            i = int(i)
            if i < 256:
                out.append(i)
            elif not skip_special_tokens:
                out += {256: b"<eos>", 257: b"<bos>"}[i]
        return out.decode("utf-8", errors="replace")

    def apply_chat_template(self, messages, add_generation_prompt=False, tools=None, tokenize=True):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        if add_generation_prompt:
            text += "<assistant>"
        return self.encode(text, add_special_tokens=False) if tokenize else text


class NumpyDecoder:
    """One attention layer in numpy with the exported decoders' I/O (names, shapes, KV layout)."""

    def __init__(self, vocab=258, d=32, kv_heads=2, head_dim=8, max_pos=64, keep_input=True, seed=0):
        r = np.random.default_rng(seed)
        self.E = r.normal(0, 1, (vocab, d)).astype(np.float32)
        self.P = r.normal(0, 1, (max_pos, d)).astype(np.float32)
        self.Wq, self.Wk, self.Wv = (r.normal(0, 0.5, (d, kv_heads * head_dim)).astype(np.float32) for _ in range(3))
        self.Wo = r.normal(0, 0.5, (kv_heads * head_dim, d)).astype(np.float32)
        self.Wl = r.normal(0, 1.0, (d, vocab)).astype(np.float32)
        self.h, self.hd = kv_heads, head_dim
        self.device = "cpu"
        self.input_names = ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key",
                            "past_key_values.0.value"] + (["num_logits_to_keep"] if keep_input else [])
        self.output_names = ["logits", "present.0.key", "present.0.value"]
        self.calls = []

    async def run(self, feeds, fetch=None):
        ids = feeds["input_ids"]
        pos = feeds["position_ids"]
        pk, pv = feeds["past_key_values.0.key"], feeds["past_key_values.0.value"]
        assert isinstance(pk, np.ndarray) and pk.shape[:2] == (1, self.h) and pk.shape[3] == self.hd
        past = pk.shape[2]
        n = ids.shape[1]
        assert feeds["attention_mask"].shape == (1, past + n)
        assert pos.tolist() == [list(range(past, past + n))]
        self.calls.append({"n": n, "past": past, "fetch": fetch, "keep": feeds.get("num_logits_to_keep")})
        x = self.E[ids[0]] + self.P[pos[0]]
        split = lambda a: a.reshape(n, self.h, self.hd).transpose(1, 0, 2)[None]  # noqa: E731
        q, k, v = split(x @ self.Wq), split(x @ self.Wk), split(x @ self.Wv)
        K = np.concatenate([pk, k], axis=2)
        V = np.concatenate([pv, v], axis=2)
        att = q @ K.transpose(0, 1, 3, 2) / np.sqrt(self.hd)
        mask = np.arange(past + n)[None, :] > (past + np.arange(n))[:, None]
        att = np.where(mask, -1e9, att)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = (att @ V)[0].transpose(1, 0, 2).reshape(n, -1)
        logits = ((x + o @ self.Wo) @ self.Wl)[None]
        if "num_logits_to_keep" in feeds:
            k_ = int(np.asarray(feeds["num_logits_to_keep"]).reshape(-1)[0])
            logits = logits[:, -k_:]
        return {"logits": logits.astype(np.float32), "present.0.key": K, "present.0.value": V}

    def dispose(self):
        pass


class FakeBackend:
    def __init__(self):
        self.released = []

    def release(self, v):
        self.released.append(id(v))


class FakeLM(CausalLM):
    def __init__(self, session=None, max_pos=64, **gen):
        self.session = session or NumpyDecoder(max_pos=max_pos)
        self.backend = FakeBackend()
        self.generation_config = GenerationConfig(**gen)
        self.max_position_embeddings = max_pos
        self.num_kv_heads, self.head_dim, self.kv_dtype = 2, 8, np.dtype(np.float32)
        self.tokenizer = ByteTokenizer()


TOK = ByteTokenizer()
PROMPT = TOK.encode("Hello")


def gen(lm, prompt=PROMPT, **kw):
    return run(lm.generate(prompt, **kw))[0].tolist()


def test_kv_cache_equals_full_recompute_and_fetches_only_logits():
    lm = FakeLM()
    cached = gen(lm, max_new_tokens=12)
    calls = lm.session.calls
    assert [c["n"] for c in calls] == [len(PROMPT)] + [1] * 11
    assert all(c["fetch"] == ["logits"] for c in calls)
    assert all(int(c["keep"]) == 1 for c in calls)
    # previous steps' presents were released (2 per step), the last step's are kept as the cache
    assert len(lm.backend.released) == 2 * 11
    lm2 = FakeLM()
    full = gen(lm2, max_new_tokens=12, use_cache=False)
    assert [c["n"] for c in lm2.session.calls] == list(range(len(PROMPT), len(PROMPT) + 12))
    assert cached == full and len(cached) == len(PROMPT) + 12


def test_model_without_num_logits_to_keep():
    a = gen(FakeLM(), max_new_tokens=8)
    b = gen(FakeLM(session=NumpyDecoder(keep_input=False)), max_new_tokens=8)
    assert a == b


def test_stats_are_recorded():
    lm = FakeLM()
    gen(lm, max_new_tokens=6)
    s = lm.last_generation_stats
    assert s["prompt_tokens"] == len(PROMPT) and s["new_tokens"] == 6 and s["stop_reason"] == "max_new_tokens"
    assert s["prefill_ms"] > 0 and s["ttft_ms"] >= s["prefill_ms"]
    assert len(s["step_run_ms"]) == 5 and len(s["step_overhead_ms"]) == 6
    assert s["step_overhead_ms_mean"] > 0 and s["tokens_per_s"] > 0


def test_sampling_reproducible_and_seed_dependent():
    kw = dict(max_new_tokens=15, do_sample=True, temperature=1.5)
    a, b = gen(FakeLM(), seed=7, **kw), gen(FakeLM(), seed=7, **kw)
    c = gen(FakeLM(), seed=8, **kw)
    assert a == b and a != c


def test_eos_stops_and_multiple_eos():
    free = gen(FakeLM(), max_new_tokens=10)[len(PROMPT):]
    lm = FakeLM()
    out = gen(lm, max_new_tokens=10, eos_token_id=[999, free[3]])
    cut = free.index(free[3])
    assert out[len(PROMPT):] == free[: cut + 1] and lm.last_generation_stats["stop_reason"] == "eos"


def test_min_new_tokens_blocks_eos():
    free = gen(FakeLM(), max_new_tokens=10)[len(PROMPT):]
    out = gen(FakeLM(), max_new_tokens=10, eos_token_id=free[0], min_new_tokens=3)[len(PROMPT):]
    assert out[0] != free[0] and free[0] not in out[:3]


def test_processors_act_inside_generate():
    free = gen(FakeLM(), max_new_tokens=10)[len(PROMPT):]
    out = gen(FakeLM(), max_new_tokens=10, suppress_tokens=[free[0]])[len(PROMPT):]
    assert free[0] not in out
    out = gen(FakeLM(), max_new_tokens=10, bad_words_ids=[[t] for t in set(free)])[len(PROMPT):]
    assert not set(out) & set(free)
    out = gen(FakeLM(), max_new_tokens=30, no_repeat_ngram_size=2)
    bigrams = list(zip(out, out[1:]))
    assert len(bigrams) == len(set(bigrams))
    rep_free = gen(FakeLM(), max_new_tokens=30)[len(PROMPT):]
    rep = gen(FakeLM(), max_new_tokens=30, repetition_penalty=50.0)[len(PROMPT):]
    assert len(set(rep)) > len(set(rep_free))


def test_stop_strings_end_generation_and_are_trimmed():
    lm = FakeLM()
    free = gen(lm, max_new_tokens=16)[len(PROMPT):]
    text = TOK.decode(free)
    stop = TOK.decode(free[5:7])
    assert stop and "\ufffd" not in stop
    first = text.find(stop)
    pieces = []
    lm2 = FakeLM()
    out = gen(lm2, max_new_tokens=16, stop_strings=[stop], callback_function=pieces.append)[len(PROMPT):]
    assert lm2.last_generation_stats["stop_reason"] == "stop_string"
    assert TOK.decode(out).find(stop) == first and TOK.decode(out).endswith(stop)
    assert "".join(pieces) == text[:first]
    assert StopStrings([stop]).trim(TOK.decode(out)) == text[:first]


def test_too_long_prompt_errors_before_compute():
    lm = FakeLM(max_pos=16)
    with pytest.raises(ContextLengthError, match="16"):
        gen(lm, prompt=list(range(16)), max_new_tokens=2)
    assert lm.session.calls == []
    # max_new_tokens beyond the context is capped: generation stops when the context is full
    out = gen(lm, prompt=list(range(10)), max_new_tokens=50)
    assert len(out) == 16 and lm.last_generation_stats["max_new_tokens_capped_to_context"]


def test_prefix_reuse_matches_fresh_run():
    lm = FakeLM()
    turn1 = gen(lm, max_new_tokens=6)
    prompt2 = turn1 + TOK.encode(" more", add_special_tokens=False)
    n_before = len(lm.session.calls)
    reused = gen(lm, prompt=prompt2, max_new_tokens=8)
    assert lm.last_generation_stats["reused_tokens"] == len(turn1) - 1
    assert lm.session.calls[n_before]["n"] == len(prompt2) - (len(turn1) - 1)
    fresh_lm = FakeLM()
    assert reused == gen(fresh_lm, prompt=prompt2, max_new_tokens=8)
    assert fresh_lm.last_generation_stats["reused_tokens"] == 0
    # a prompt that diverges from the cached sequence is prefilled in full and still correct
    other = TOK.encode("Help me")
    assert gen(lm, prompt=other, max_new_tokens=5) == gen(FakeLM(), prompt=other, max_new_tokens=5)
    assert lm.last_generation_stats["reused_tokens"] == 0


def test_cancel_stops_within_one_token():
    for make in ("event", "callable"):
        lm = FakeLM()
        ev = asyncio.Event() if make == "event" else None
        flag = []

        class Counter:
            n = -1  # the first put is the prompt

            def put(self, ids):
                Counter.n += 1
                if Counter.n == 3:
                    ev.set() if ev else flag.append(1)

            def end(self):
                pass

        async def go():
            return await lm.generate(PROMPT, max_new_tokens=20, streamer=Counter(),
                                     cancel=ev if ev else (lambda: bool(flag)))
        out = run(go())[0].tolist()
        assert len(out) - len(PROMPT) == 3
        assert lm.last_generation_stats["stop_reason"] == "cancelled"
        assert len(lm.session.calls) == 3  # prefill + 2 decode steps: no run after the cancel
    # set before the call: nothing runs at all
    lm = FakeLM()
    assert gen(lm, cancel=lambda: True) == PROMPT and lm.session.calls == []
    with pytest.raises(TypeError, match="is_set"):
        gen(FakeLM(), cancel=42)


def test_max_time():
    lm = FakeLM()
    out = gen(lm, max_new_tokens=40, max_time=1e-9)
    assert len(out) == len(PROMPT) + 1 and lm.last_generation_stats["stop_reason"] == "max_time"


def test_begin_suppress_tokens_inside_generate():
    free = gen(FakeLM(), max_new_tokens=10)[len(PROMPT):]
    out = gen(FakeLM(), max_new_tokens=10, begin_suppress_tokens=[free[0]])[len(PROMPT):]
    assert out[0] != free[0]
    # later steps are not suppressed: the same token generated freely from that prefix appears
    lm = FakeLM()
    prefix = PROMPT + [free[0]]
    assert gen(lm, prompt=prefix, max_new_tokens=3, begin_suppress_tokens=[free[1]])[len(prefix)] != free[1]
    assert gen(FakeLM(), prompt=prefix, max_new_tokens=3)[len(prefix)] == free[1]


def test_max_new_tokens_zero_returns_the_prompt_without_running():
    lm = FakeLM()
    events = []

    class Rec:
        def put(self, ids):
            events.append(np.asarray(ids).reshape(-1).tolist())

        def end(self):
            events.append("end")

    assert gen(lm, max_new_tokens=0, streamer=Rec()) == PROMPT
    assert lm.session.calls == [] and events == [PROMPT, "end"]
    assert lm.last_generation_stats["stop_reason"] == "max_new_tokens"
    assert lm.last_generation_stats["new_tokens"] == 0


def test_stop_strings_matcher():
    stops = StopStrings(["STOP", "xy"])
    assert stops.find("a xy STOP") == 2 and stops.find("a xy STOP", 3) == 5 and stops.find("abc") == -1
    assert stops.trim("abc STOP def xy") == "abc " and stops.trim("abc") == "abc"
    assert stops.safe_prefix("abc ST") == (4, False)  # "ST" may become "STOP": held back
    assert stops.safe_prefix("abc x") == (4, False)
    assert stops.safe_prefix("abc STOP def") == (4, True)
    assert stops.safe_prefix("abc") == (3, False)
    assert not StopStrings(None) and StopStrings(None).trim("a STOP") == "a STOP"
    assert StopStrings("STOP").strings == ["STOP"] and StopStrings("STOP").longest == 4
    with pytest.raises(ValueError, match="non-empty strings"):
        StopStrings(["ok", ""])


def test_generate_unknown_kwarg():
    with pytest.raises(TypeError, match="valid generation arguments"):
        gen(FakeLM(), max_len=3)


# =============================================================================================
# streaming
# =============================================================================================
def test_incremental_decoder_never_breaks_utf8():
    text = "héllo 😀 日本 ok"
    dec = TokenStreamDecoder(TOK)
    pieces = [dec.put(b) for b in text.encode("utf-8")]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[len("h")] == ""  # first byte of "é" waits for the second


def test_text_streamer_stop_string_hold_back():
    got = []
    s = TextStreamer(TOK, skip_prompt=True, callback_function=got.append, stop_strings=["STOP"])
    s.put([257])
    for b in "abc STx STOP def".encode():
        s.put([b])
    s.end()
    assert "".join(got) == "abc STx " and "S" not in got[-1:]


def test_text_streamer_prints_and_skip_prompt(capsys):
    s = TextStreamer(TOK)
    s.put(np.array([TOK.encode("Hi ", add_special_tokens=False)]))
    for b in "there".encode():
        s.put(np.array([b]))
    s.end()
    assert capsys.readouterr().out == "Hi there\n"


def test_streamer_events_during_generate():
    lm = FakeLM()
    events = []

    class Rec:
        def put(self, ids):
            events.append(("put", np.asarray(ids).reshape(-1).tolist()))

        def end(self):
            events.append(("end",))

    out = gen(lm, max_new_tokens=5, streamer=Rec())
    assert events[0] == ("put", PROMPT) and events[-1] == ("end",)
    assert [e[1][0] for e in events[1:-1]] == out[len(PROMPT):]


def test_text_iterator_streamer():
    lm = FakeLM()

    async def go():
        st = TextIteratorStreamer(TOK)
        task = asyncio.ensure_future(lm.generate(PROMPT, max_new_tokens=10, streamer=st))
        pieces = [p async for p in st]
        return pieces, (await task)[0].tolist()

    pieces, out = run(go())
    assert "".join(pieces) == TOK.decode(out[len(PROMPT):], skip_special_tokens=True)


# =============================================================================================
# pipeline over the fake model
# =============================================================================================
def test_pipeline_shapes():
    from webformers.text.pipeline import TextGenerationPipeline
    lm = FakeLM()
    pipe = TextGenerationPipeline(lm, TOK)
    r = run(pipe("Hello", max_new_tokens=5))
    cont = TOK.decode(gen(FakeLM(), max_new_tokens=5)[len(PROMPT):], skip_special_tokens=True)
    assert r == [{"generated_text": "Hello" + cont}]
    assert run(pipe("Hello", max_new_tokens=5, return_full_text=False)) == [{"generated_text": cont}]
    chat = [{"role": "user", "content": "Hi"}]
    r = run(pipe(chat, max_new_tokens=4))
    assert r[0]["generated_text"][:1] == chat and r[0]["generated_text"][1]["role"] == "assistant"
    assert len(r[0]["generated_text"]) == 2
    assert len(run(pipe(["a", "b"], max_new_tokens=2))) == 2
    with pytest.raises(TypeError, match="text-generation input"):
        run(pipe(42))


# =============================================================================================
# the tiny random Llama through onnxruntime (needs the toolchain)
# =============================================================================================
HAVE_TOOLCHAIN = importlib.util.find_spec("webformers.toolchain") is not None and \
    importlib.util.find_spec("onnxruntime") is not None


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    from webformers.toolchain import build_demo_models  # the [test] extra installs the toolchain
    root = tmp_path_factory.mktemp("models")
    build_demo_models(root, which=("tiny",))
    return root / "webformers" / "tiny-random-llama"


async def _tiny_lm(repo_dir, dtype="fp32"):
    import json

    from webformers.runtime import backend
    from webformers.dtypes import onnx_file
    from webformers.text.causal_lm import CausalLM
    cfg = json.loads((repo_dir / "config.json").read_text())
    gen_path = repo_dir / "generation_config.json"
    gc = GenerationConfig.from_json(gen_path.read_text()) if gen_path.exists() else None
    sess = await backend.create_session(str(repo_dir / onnx_file("model", dtype)))
    return CausalLM(sess, cfg, gc, dtype=dtype)


def test_tiny_llama_cache_vs_recompute_vs_reference(tiny_repo):
    from webformers.toolchain import reference_greedy
    prompt = [1, 9906, 11, 1346, 3102, 253, 655]
    lm = run(_tiny_lm(tiny_repo))
    kw = dict(max_new_tokens=12, eos_token_id=None, do_sample=False)
    cached = gen(lm, prompt, **kw)
    full = gen(lm, prompt, use_cache=False, **kw)
    assert cached == full
    assert cached[len(prompt):] == list(reference_greedy(tiny_repo, "fp32", prompt, 12))[-12:]
    # prefix reuse: the next turn only prefills the new tokens, output identical to a fresh model
    nxt = cached + [5, 6, 7]
    reused = gen(lm, nxt, **kw)
    assert lm.last_generation_stats["reused_tokens"] == len(cached) - 1
    assert reused == gen(run(_tiny_lm(tiny_repo)), nxt, **kw)
    # the random model repeats itself under plain greedy; a strong repetition penalty makes every
    # step pick a different token, so cache vs recompute is compared on a varied sequence too
    kw_var = dict(kw, max_new_tokens=16, repetition_penalty=20.0)
    varied = gen(lm, prompt, reuse_cache=False, **kw_var)
    assert len(set(varied[len(prompt):])) >= 12
    assert varied == gen(lm, prompt, use_cache=False, **kw_var)
    sampled = dict(kw, max_new_tokens=16, do_sample=True, temperature=1.0, seed=3)
    assert gen(lm, prompt, reuse_cache=False, **sampled) == gen(lm, prompt, use_cache=False, **sampled)
    too_long = [3] * lm.max_position_embeddings
    with pytest.raises(ContextLengthError):
        gen(lm, too_long)


def _tiny_tokenizer(repo_dir):
    import json

    from webformers.text.tokenizer import Tokenizer
    cfg = repo_dir / "tokenizer_config.json"
    return Tokenizer.from_json((repo_dir / "tokenizer.json").read_text(),
                               json.loads(cfg.read_text()) if cfg.exists() else {})


def test_tiny_llama_streaming_and_stop_strings_with_real_tokenizer(tiny_repo):
    from webformers.text.pipeline import TextGenerationPipeline
    tok = _tiny_tokenizer(tiny_repo)
    # the tokenizer's incremental decoder: multi-byte characters split over byte tokens
    text = "Héllo wörld 😀 日本語 done"
    ids = tok.encode(text, add_special_tokens=False)
    got = []
    st = TextStreamer(tok, skip_prompt=True, callback_function=got.append)
    st.put([ids[0]])
    for t in ids[1:]:
        st.put([t])
    st.end()
    assert "".join(got) == tok.decode(ids[1:], skip_special_tokens=True)
    assert all("\ufffd" not in g for g in got)

    lm = run(_tiny_lm(tiny_repo))
    pipe = TextGenerationPipeline(lm, tok)
    kw = dict(max_new_tokens=20, repetition_penalty=20.0, eos_token_id=None)
    free = run(pipe("Once upon a time", return_full_text=False, **kw))[0]["generated_text"]
    words = free.split()
    assert len(words) >= 6
    stop = words[3]
    first = free.find(stop)
    pieces = []
    r = run(pipe("Once upon a time", stop_strings=stop, callback_function=pieces.append, **kw))
    assert r == [{"generated_text": "Once upon a time" + free[:first]}]
    assert "".join(pieces) == free[:first]
    assert lm.last_generation_stats["stop_reason"] == "stop_string"
    assert lm.last_generation_stats["new_tokens"] < 20


def test_pipeline_failure_while_loading_concurrently_frees_the_model(tiny_repo, tmp_path, monkeypatch):
    """pipeline() loads the tokenizer and the model concurrently: when the tokenizer fails (here: a corrupted
    tokenizer.json, caught by the manifest's sha256) the already-created model session is disposed."""
    import shutil

    from webformers.text import causal_lm as models
    from webformers.pipelines import pipeline

    repo = tmp_path / "webformers" / "tiny-random-llama"
    shutil.copytree(tiny_repo, repo)
    (repo / "tokenizer.json").write_text((repo / "tokenizer.json").read_text().replace("<", "[", 1))
    disposed = []
    real = models.CausalLM.dispose
    monkeypatch.setattr(models.CausalLM, "dispose", lambda self: (disposed.append(self), real(self)))
    monkeypatch.setenv("WEBFORMERS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(Exception, match="tokenizer.json"):
        run(pipeline("text-generation", "webformers/tiny-random-llama", dtype="fp32", device="wasm",
                     host=str(tmp_path)))
    assert len(disposed) == 1


def test_from_pretrained_and_pipeline_through_the_store(tiny_repo):
    """AutoModelForCausalLM / AutoTokenizer / pipeline via ModelRepo (a local directory host)."""
    from webformers.text.causal_lm import AutoModelForCausalLM
    from webformers.text.tokenizer import AutoTokenizer
    from webformers.pipelines import pipeline
    from webformers.toolchain import reference_greedy
    host = str(tiny_repo.parent.parent)
    name = "webformers/tiny-random-llama"

    async def go():
        events = []
        model = await AutoModelForCausalLM.from_pretrained(name, dtype="q4", device="wasm", host=host,
                                                           progress_callback=events.append)
        tok = await AutoTokenizer.from_pretrained(name, host=host)
        prompt = tok.encode("Once upon a time")
        out = await model.generate(prompt, max_new_tokens=10, eos_token_id=None)
        pipe = await pipeline("text-generation", name, dtype="q4", device="wasm", host=host)
        chat = [{"role": "user", "content": "Hello there"}]
        kw = dict(max_new_tokens=8, eos_token_id=None, repetition_penalty=20.0)
        turn1 = await pipe(chat, **kw)
        msgs = turn1[0]["generated_text"] + [{"role": "user", "content": "And then?"}]
        turn2 = await pipe(msgs, **kw)
        stats2 = dict(pipe.model.last_generation_stats)
        pipe.model.clear_cache()
        fresh2 = await pipe(msgs, **kw)
        return model, prompt, out[0].tolist(), events, turn1, turn2, stats2, fresh2

    model, prompt, out, events, turn1, turn2, stats2, fresh2 = run(go())
    assert model.dtype == "q4" and events
    # where loading spent its time: the files (read + verified) and the session
    assert set(model.load_timings) == {"files", "session:model"}, model.load_timings
    assert all(isinstance(v, float) and v >= 0 for v in model.load_timings.values())
    assert out[len(prompt):] == list(reference_greedy(tiny_repo, "q4", prompt, 10))[-10:]
    msgs = turn1[0]["generated_text"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[1]["content"]
    assert [m["role"] for m in turn2[0]["generated_text"]] == ["user", "assistant", "user", "assistant"]
    assert turn2 == fresh2
    # the second turn re-used the first turn's cache when its prompt extends the kept sequence
    assert stats2["reused_tokens"] > 0 and stats2["reused_tokens"] < stats2["prompt_tokens"]
    with pytest.raises(ValueError, match="supported tasks: text-generation"):
        run(pipeline("summarization", name, host=host))
