"""Parity of webformers' pure-Python tokenizer with HF ``tokenizers`` 0.23.3 (CPython)."""
from __future__ import annotations

import json
import random
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tokenizer_fixtures as fx  # noqa: E402

hf_tokenizers = pytest.importorskip("tokenizers")

from webformers.text.tokenizer import (  # noqa: E402
    Tokenizer, TokenizerError, TokenStreamDecoder, category_ranges, property_ranges, clean_up_tokenization,
    translate_regex,
)


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return fx.smollm2_tokenizer_dir()


def _pair(tj: dict, cfg: dict | None = None):
    return Tokenizer.from_json(tj, cfg), hf_tokenizers.Tokenizer.from_str(json.dumps(tj))


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    tj, cfg = fx.load_json_files(smollm2_dir)
    return Tokenizer.from_json(tj, cfg), hf_tokenizers.Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))


@pytest.fixture(scope="session")
def trained():
    return {
        "sentencepiece_bpe": _pair(fx.train_sentencepiece_bpe()),
        "metaspace_decoder_bpe": _pair(fx.train_metaspace_decoder_bpe()),
        "llama3_split_bpe": _pair(fx.train_bytelevel_split_bpe(fx.LLAMA3_PATTERN)),
        "qwen2_split_bpe": _pair(fx.train_bytelevel_split_bpe(fx.QWEN2_PATTERN)),
        "wordpiece": _pair(fx.train_wordpiece()),
    }


EXTRA = [
    "Hello [MASK] there wordtok xwordtok wordtok. hello Hello  [MASK]  x",
    "<|user|>hi<|assistant|> yo <|user|>",
    "  <|eot_id|> \n<|im_start|>x<|im_end|>",
]

# Characters that stress the Unicode classes: White_Space vs str.isspace (U+001C..U+001F), Nl/No numbers,
# marks, ZWJ, long s / Kelvin sign under (?i), final sigma, dotted I, surrogate-free astral chars.
_POOL = (
    list("abcXYZ019 '\"!?.,;:-_()[]{}<>/\\|@#$%^&*+=~`") + ["'s", "'S", "'ll", "'re", "'D"]
    + list("\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
    + list("éüñçßÆøåſKΣσςİıДжЯ日本語中文한국ーカナ") + ["e\u0301", "\u0308", "\u0335", "\u20dd"]
    + list("١٢٣٤مرحبا") + list("Ⅻⅻ½²³₂①〇") + list("€£¥₿©®™∑√∞←→") + ["\u200d", "\u200c", "\ufe0f", "\u200b"]
    + ["😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "🏳️\u200d🌈", "🧑🏿\u200d💻", "\U0001F170", "\U00010400"]
    + ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<|eot_id|>", "[MASK]", "Hello"]
    + ["\r\n", "  ", "   ", "\n\n", "123", "4567", "3.14"]
)


def fuzz_strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_POOL) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def _assert_parity(name: str, ours: Tokenizer, hf, texts) -> None:
    for text in texts:
        for add in (True, False):
            got = ours.encode(text, add_special_tokens=add)
            want = hf.encode(text, add_special_tokens=add).ids
            assert got == want, (
                f"{name}: ids differ for {text!r} (add_special_tokens={add})\n"
                f" ours: {ours.convert_ids_to_tokens(got)}\n hf:   {hf.encode(text).tokens}")
        for skip in (False, True):
            got_text = ours.decode(want, skip_special_tokens=skip)
            want_text = hf.decode(want, skip_special_tokens=skip)
            assert got_text == want_text, f"{name}: decode differs for {text!r} (skip={skip})"


# ----------------------------------------------------------------------------------------- parity tests

def test_smollm2_parity_corpus(smollm2):
    ours, hf = smollm2
    _assert_parity("smollm2", ours, hf, fx.CORPUS + EXTRA)


def test_smollm2_parity_fuzz(smollm2):
    ours, hf = smollm2
    _assert_parity("smollm2", ours, hf, fuzz_strings(400, seed=1))


@pytest.mark.parametrize("name", ["sentencepiece_bpe", "metaspace_decoder_bpe", "llama3_split_bpe",
                                  "qwen2_split_bpe", "wordpiece"])
def test_trained_parity(trained, name):
    ours, hf = trained[name]
    _assert_parity(name, ours, hf, fx.CORPUS + EXTRA + fuzz_strings(250, seed=hash(name) & 0xFFFF))


@pytest.mark.parametrize("trunc,pad", [
    ({"direction": "Right", "max_length": 12, "strategy": "LongestFirst", "stride": 0}, None),
    ({"direction": "Left", "max_length": 9, "strategy": "LongestFirst", "stride": 0},
     {"strategy": {"Fixed": 9}, "direction": "Left", "pad_to_multiple_of": None, "pad_id": 0, "pad_type_id": 0,
      "pad_token": "[PAD]"}),
    (None, {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": 8, "pad_id": 0,
            "pad_type_id": 0, "pad_token": "[PAD]"}),
])
def test_json_truncation_and_padding(trunc, pad):
    """truncation/padding stored in tokenizer.json apply to encode(), as in the HF library."""
    tj = fx.train_wordpiece()
    tj["truncation"], tj["padding"] = trunc, pad
    ours, hf = _pair(tj)
    for text, pair in [("a short one", None), ("x " * 40, None), ("hello world " * 5, "second sentence " * 6),
                       ("hi", "there")]:
        assert ours.encode(text, pair) == hf.encode(text, pair).ids, (text, pair)


def test_sentencepiece_uses_byte_fallback_and_metaspace(trained):
    ours, hf = trained["sentencepiece_bpe"]
    ids = ours.encode("Emoji 😀 here", add_special_tokens=True)
    toks = ours.convert_ids_to_tokens(ids)
    assert toks[0] == "<s>"
    assert "<0xF0>" in toks and "<0x9F>" in toks, toks  # 😀 = F0 9F 98 80 falls back to bytes
    assert any(t.startswith("\u2581") for t in toks), toks
    assert ours.decode(ids, skip_special_tokens=True) == "Emoji 😀 here"
    # an incomplete byte sequence decodes to one U+FFFD per byte, like HF's ByteFallback decoder
    partial = ids[:toks.index("<0x9F>") + 1]
    assert ours.decode(partial) == hf.decode(partial, skip_special_tokens=False)
    assert ours.decode(partial).endswith("\ufffd\ufffd")


def test_pair_encoding_and_template(trained):
    ours, hf = trained["sentencepiece_bpe"]
    for a, b in [("first part", "second part"), ("", "x"), ("日本", "😀")]:
        assert ours.encode(a, b) == hf.encode(a, b).ids
    ours, hf = trained["wordpiece"]
    assert ours.encode("Hello, World!", "Second one.") == hf.encode("Hello, World!", "Second one.").ids


def test_pre_tokenizer_regex_patterns_vs_hf():
    """The translated Llama-3 / Qwen / GPT-2 split regexes cut text exactly like oniguruma does."""
    from tokenizers import Regex, pre_tokenizers

    from webformers.text.tokenizer import GPT2_PATTERN, build_pre_tokenizer

    for pattern in (fx.LLAMA3_PATTERN, fx.QWEN2_PATTERN, GPT2_PATTERN):
        spec = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
        ours = build_pre_tokenizer(spec)
        hf = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        for text in fx.CORPUS + fuzz_strings(300, seed=7):
            want = [s for s, _ in hf.pre_tokenize_str(text)]
            got = [s for s, _ in ours([(text, True)] if text else [])]
            assert got == want, f"{pattern[:30]}...: {text!r}\n ours {got}\n hf   {want}"


@pytest.mark.parametrize("spec", [
    {"type": "Digits", "individual_digits": True},
    {"type": "Digits", "individual_digits": False},
    {"type": "Whitespace"},
    {"type": "WhitespaceSplit"},
    {"type": "Punctuation", "behavior": "Isolated"},
    {"type": "Punctuation", "behavior": "MergedWithPrevious"},
    {"type": "BertPreTokenizer"},
    {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
    {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
    {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext", "invert": False},
    {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Contiguous", "invert": True},
    {"type": "Split", "pattern": {"Regex": r"\p{N}"}, "behavior": "Removed", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                           {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                            "use_regex": True}]},
])
def test_pre_tokenizers_vs_hf(spec):
    from webformers.text.tokenizer import build_pre_tokenizer

    hf = hf_tokenizers.Tokenizer.from_str(json.dumps({
        "version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": spec,
    })).pre_tokenizer
    ours = build_pre_tokenizer(spec)
    for text in fx.CORPUS + fuzz_strings(150, seed=3):
        want = [s for s, _ in hf.pre_tokenize_str(text)]
        got = [s for s, _ in ours([(text, True)] if text else [])]
        assert got == want, f"{spec}: {text!r}\n ours {got}\n hf   {want}"


@pytest.mark.parametrize("spec", [
    {"type": "NFC"}, {"type": "NFD"}, {"type": "NFKC"}, {"type": "NFKD"}, {"type": "Lowercase"},
    {"type": "Strip", "strip_left": True, "strip_right": True},
    {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
    {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
    {"type": "Prepend", "prepend": "\u2581"},
    {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None,
     "lowercase": True},
    {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"}, {"type": "Lowercase"}]},
])
def test_normalizers_vs_hf(spec):
    from webformers.text.tokenizer import build_normalizer

    hf = hf_tokenizers.Tokenizer.from_str(json.dumps({
        "version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}, "normalizer": spec,
    })).normalizer
    ours = build_normalizer(spec)
    # (Unicode-version-sensitive normalization is the same for the characters used here.)
    for text in fx.CORPUS + fuzz_strings(150, seed=5):
        assert ours(text) == hf.normalize_str(text), f"{spec}: {text!r}"


# ------------------------------------------------------------------------------------- unicode tables

def test_category_table_matches_unicodedata():
    """The plane shortcuts in category_ranges agree with a full unicodedata scan."""
    table = category_ranges()
    lookup = {}
    for cat, ranges in table.items():
        for lo, hi in ranges:
            lookup[(lo, hi)] = cat
    rng = random.Random(0)
    samples = [rng.randrange(0x110000) for _ in range(20000)] + list(range(0x3FFF0, 0x40010)) + \
        list(range(0xFFFF0, 0x100010)) + list(range(0x10FFF0, 0x110000))
    flat = sorted(lookup.items())
    import bisect
    starts = [lo for (lo, _), _ in flat]
    for cp in samples:
        (lo, hi), cat = flat[bisect.bisect_right(starts, cp) - 1]
        assert lo <= cp <= hi and cat == unicodedata.category(chr(cp)), hex(cp)


def test_regex_translation_errors_and_classes():
    assert translate_regex("abc") == "abc"
    assert "\\u3000" in translate_regex(r"\s")
    with pytest.raises(TokenizerError, match="unsupported Unicode property"):
        translate_regex(r"\p{Han}+")
    with pytest.raises(TokenizerError, match="nested or POSIX"):
        translate_regex(r"[[:alpha:]]")
    # \s is Unicode White_Space: U+001C..U+001F are NOT whitespace (Python's str.isspace says they are)
    ws = dict(property_ranges("White_Space"))
    assert 0x1C not in ws and 0x3000 in ws


def test_bad_component_errors():
    base = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}
    with pytest.raises(TokenizerError, match="unsupported normalizer type 'Bogus'.*supported: NFC"):
        Tokenizer.from_json({**base, "normalizer": {"type": "Bogus"}})
    with pytest.raises(TokenizerError, match="unsupported pre-tokenizer type"):
        Tokenizer.from_json({**base, "pre_tokenizer": {"type": "Nope"}})
    with pytest.raises(TokenizerError, match="unsupported tokenizer model type 'Unigram'"):
        Tokenizer.from_json({"model": {"type": "Unigram", "vocab": []}})
    with pytest.raises(TokenizerError, match="merge #0"):
        Tokenizer.from_json({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})
    with pytest.raises(TokenizerError, match="not valid JSON"):
        Tokenizer.from_json("{not json")
    with pytest.raises(TokenizerError, match="expects a str"):
        Tokenizer.from_json(base).encode(123)


# ------------------------------------------------------------------------------ HF-like call / attributes

def test_special_token_ids_and_call(smollm2):
    ours, hf = smollm2
    assert ours.eos_token == "<|im_end|>" and ours.eos_token_id == hf.token_to_id("<|im_end|>") == 2
    assert ours.bos_token_id == 1 and ours.pad_token_id == 2 and ours.unk_token_id == 0
    out = ours(["Hello world", "Hi"], padding=True, return_tensors="np")
    assert out["input_ids"].dtype == np.int64 and out["input_ids"].shape == out["attention_mask"].shape
    assert out["input_ids"].shape[0] == 2
    hello = hf.encode("Hello world").ids
    assert out["input_ids"][0].tolist() == hello
    assert out["attention_mask"][1].tolist() == [1] * len(hf.encode("Hi").ids) + [0] * (len(hello) - 1)
    single = ours("Hello world")
    assert single == {"input_ids": hello, "attention_mask": [1] * len(hello)}
    with pytest.raises(TokenizerError, match="padding=True"):
        ours(["Hello world", "Hi"], return_tensors="np")
    trunc = ours("one two three four five six", truncation=True, max_length=3)
    assert len(trunc["input_ids"]) == 3


def test_transformers_decode_matches(smollm2_dir, smollm2):
    """transformers' PreTrainedTokenizerFast agrees too (its extra clean-up step is config-driven)."""
    from transformers import AutoTokenizer as HFAuto

    ours, _ = smollm2
    t = HFAuto.from_pretrained(str(smollm2_dir))
    for text in fx.CORPUS:
        ids = t.encode(text, add_special_tokens=True)
        assert ours.encode(text) == ids
        assert ours.decode(ids) == t.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == t.decode(ids, skip_special_tokens=True)


# ---------------------------------------------------------------------------------- streaming decode

def _stream(tok: Tokenizer, ids, **kw):
    dec = TokenStreamDecoder(tok, **kw)
    deltas = [dec.put(i) for i in ids]
    deltas.append(dec.end())
    return deltas


@pytest.mark.parametrize("which", ["smollm2", "sentencepiece_bpe", "metaspace_decoder_bpe", "llama3_split_bpe",
                                   "wordpiece"])
def test_stream_decode(which, smollm2, trained):
    ours, _ = smollm2 if which == "smollm2" else trained[which]
    for text in fx.CORPUS + EXTRA + fuzz_strings(60, seed=11):
        ids = ours.encode(text)
        for skip in (False, True):
            full = ours.decode(ids, skip_special_tokens=skip)
            deltas = _stream(ours, ids, skip_special_tokens=skip)
            assert "".join(deltas) == full, (which, text)
            if "\ufffd" not in full:
                assert not any("\ufffd" in d for d in deltas), (which, text, deltas)


def test_stream_holds_back_partial_utf8(smollm2):
    ours, _ = smollm2
    ids = ours.encode("a👨‍👩‍👧 b")
    dec = ours.stream_decoder()
    seen = []
    for i in ids:
        d = dec.put(i)
        seen.append(d)
        # every emitted prefix is valid text that the final decode starts with
        assert "\ufffd" not in d
        assert ours.decode(ids).startswith("".join(seen))
    seen.append(dec.end())
    assert "".join(seen) == "a👨‍👩‍👧 b"
    # a multi-byte character split across ids is held back until complete
    byte_ids = [ours.token_to_id(c) for c in ours.convert_ids_to_tokens(ids)[1]]  # 'ðŁĳ¨' → single-byte ids
    if all(b is not None for b in byte_ids) and len(byte_ids) > 1:
        dec = ours.stream_decoder()
        assert [dec.put(b) for b in byte_ids[:-1]] == [""] * (len(byte_ids) - 1)


def test_stream_invalid_bytes_flushed(trained):
    """An id sequence that is invalid UTF-8 in the middle still streams to exactly decode(all)."""
    ours, _ = trained["sentencepiece_bpe"]
    b = lambda x: ours.token_to_id(f"<0x{x:02X}>")  # noqa: E731
    seqs = [
        [ours.token_to_id("\u2581a"), b(0xF0), b(0x9F), ours.token_to_id("\u2581a")],  # truncated emoji
        [b(0xE2), b(0x82), b(0xAC), b(0xFF), b(0x41)],  # € then an invalid byte then 'A'
        [b(0xC3)],  # dangling lead byte at the end
    ]
    for ids in seqs:
        assert None not in ids
        deltas = _stream(ours, ids)
        assert "".join(deltas) == ours.decode(ids)


def test_stream_cleanup_chunks_equal_full_cleanup(trained):
    ours, _ = trained["wordpiece"]
    rng = random.Random(2)
    pieces = ["a", "b", " ", " ", ".", ",", "'", "n't", "'s", "?", "!", "'m", "'re", "'ve", "x y"]
    for _ in range(300):
        raw = [rng.choice(pieces) for _ in range(rng.randint(1, 25))]
        dec = TokenStreamDecoder(ours, clean_up_tokenization_spaces=True)
        out = "".join(dec._emit(p, final=False) for p in raw) + dec._emit("", final=True)
        assert out == clean_up_tokenization("".join(raw)), raw
    text = "Hello , world ! Isn 't it 's fine ?"
    ids = ours.encode(text)
    assert "".join(_stream(ours, ids, clean_up_tokenization_spaces=True)) == ours.decode(
        ids, clean_up_tokenization_spaces=True)


# ----------------------------------------------------------------------------------------------- speed

def test_encode_2000_tokens(smollm2_dir, smollm2):
    """2,000 tokens of prose and code encode exactly like HF tokenizers; the times are printed, not asserted
    (the browser figures are in `build.py bench`)."""
    _, hf = smollm2
    # varied prose + code (stdlib docs) so the per-word cache starts cold, plus the multilingual corpus
    lines, n_tokens = list(fx.CORPUS), 0
    for line in fx.training_text()[::3]:
        lines.append(line)
        n_tokens += len(hf.encode(line).ids)
        if n_tokens > 1700:
            break
    text = "\n".join(lines)
    n_tokens = len(hf.encode(text).ids)
    assert 1900 < n_tokens < 2600, n_tokens
    tj, cfg = fx.load_json_files(smollm2_dir)
    t0 = time.perf_counter()
    fresh = Tokenizer.from_json(tj, cfg)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids = fresh.encode(text)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    fresh.encode(text)
    t_warm = time.perf_counter() - t0
    assert ids == hf.encode(text).ids
    print(f"\n[tokenizer speed] {n_tokens} tokens: load {t_load * 1e3:.0f} ms, "
          f"cold encode {t_cold * 1e3:.1f} ms, warm encode {t_warm * 1e3:.1f} ms")


# ------------------------------------------------------------------------------------------- in Pyodide

@pytest.mark.browser
def test_tokenizer_and_chat_template_in_pyodide(shared_page, server, smollm2_dir, smollm2):
    """The same files, fetched by the worker: identical ids, decode, streaming and chat template in Pyodide."""
    from helpers import run_py
    from transformers import AutoTokenizer as HFAuto

    _, hf = smollm2
    server.add_root("/fixtures/smollm2_tok/", smollm2_dir)
    texts = fx.CORPUS + EXTRA + fuzz_strings(40, seed=21)
    long_text = "\n".join(fx.training_text()[::3][:200])
    conv = [{"role": "user", "content": "Hi there 😀"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me about 日本."}]
    code = f"""
import json, time
from pyodide.http import pyfetch
base = {json.dumps(server.url + "/fixtures/smollm2_tok/")}
files = {{}}
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    files[name] = await (await pyfetch(base + name)).string()
from webformers.text.tokenizer import Tokenizer, TokenStreamDecoder
t0 = time.perf_counter()
tok = Tokenizer.from_json(files["tokenizer.json"], files["tokenizer_config.json"], files["chat_template.jinja"])
t_load = time.perf_counter() - t0
texts = json.loads({json.dumps(json.dumps(texts))})
ids = [tok.encode(x) for x in texts]
dec = [tok.decode(i) for i in ids]
streamed = []
for i in ids:
    s = TokenStreamDecoder(tok)
    streamed.append("".join([s.put(x) for x in i]) + s.end())
long_text = json.loads({json.dumps(json.dumps(long_text))})
t0 = time.perf_counter(); long_ids = tok.encode(long_text); t_cold = time.perf_counter() - t0
t0 = time.perf_counter(); tok.encode(long_text); t_warm = time.perf_counter() - t0
conv = json.loads({json.dumps(json.dumps(conv))})
chat = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
chat_ids = tok.apply_chat_template(conv, add_generation_prompt=True)
try:
    tok.apply_chat_template(conv, chat_template="{{{{ ''.__class__.__mro__ }}}}", tokenize=False)
    blocked = False
except Exception as e:
    blocked = type(e).__name__ + ": " + str(e)
{{"ids": ids, "dec": dec, "streamed": streamed, "long_ids": long_ids, "chat": chat, "chat_ids": chat_ids,
  "blocked": blocked, "t_load": t_load, "t_cold": t_cold, "t_warm": t_warm}}
"""
    out = run_py(shared_page, code)
    for text, got_ids, got_dec, got_stream in zip(texts, out["ids"], out["dec"], out["streamed"]):
        want = hf.encode(text).ids
        assert got_ids == want, text
        assert got_dec == hf.decode(want, skip_special_tokens=False) == got_stream, text
    assert out["long_ids"] == hf.encode(long_text).ids
    t = HFAuto.from_pretrained(str(smollm2_dir))
    assert out["chat"] == t.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    assert out["chat_ids"] == list(t.apply_chat_template(conv, add_generation_prompt=True, return_dict=False))
    assert out["blocked"] and out["blocked"].startswith("ChatTemplateError") and "unsafe" in out["blocked"]
    print(f"\n[pyodide tokenizer] {len(out['long_ids'])} tokens: load {out['t_load'] * 1e3:.0f} ms, "
          f"cold encode {out['t_cold'] * 1e3:.0f} ms, warm {out['t_warm'] * 1e3:.0f} ms")
