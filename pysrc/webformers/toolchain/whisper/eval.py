"""Evaluation audio for the Whisper toolchain: synthesized on this machine, never committed.

``synthesize_clips(out_dir)`` speaks ``SENTENCES`` with espeak-ng (``apt-get install -y espeak-ng sox``)
and resamples them to 16 kHz mono 16-bit WAV with sox; ``wer(refs, hyps)`` is the corpus word error rate
(word-level edit distance summed over clips / reference words) after ``normalize_text`` (lower case,
punctuation dropped, digits spelled as espeak says them are left alone).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

#: the references: short, everyday sentences (~2-4 s each when spoken).
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you get home tonight.",
    "The weather is nice and warm this afternoon.",
    "She bought three apples and a loaf of bread.",
    "We will meet at the station after lunch.",
    "My brother plays the guitar every evening.",
    "Turn left at the next corner and keep going.",
    "The children are reading books in the library.",
    "I would like a cup of coffee with milk.",
    "The train was late because of the heavy snow.",
)
VOICE = "en-us"
WORDS_PER_MINUTE = 150


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is missing: apt-get install -y espeak-ng sox")
    return path


def synthesize_clips(out_dir, sentences=SENTENCES, *, voice: str = VOICE) -> list[Path]:
    """WAV files (16 kHz, mono, 16-bit) ``clip_00.wav``... speaking ``sentences``; existing files are kept."""
    espeak, sox = _need("espeak-ng"), _need("sox")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(sentences):
        dst = out_dir / f"clip_{i:02d}.wav"
        if not dst.is_file():
            raw = out_dir / f".clip_{i:02d}.raw.wav"
            subprocess.run([espeak, "-v", voice, "-s", str(WORDS_PER_MINUTE), "-w", str(raw), text],
                           check=True, capture_output=True)
            tmp = out_dir / f".clip_{i:02d}.tmp.wav"
            subprocess.run([sox, str(raw), "-r", "16000", "-c", "1", "-b", "16", str(tmp)],
                           check=True, capture_output=True)
            raw.unlink()
            tmp.replace(dst)
        paths.append(dst)
    (out_dir / "references.txt").write_text("\n".join(sentences) + "\n")
    return paths


def normalize_text(s: str) -> list[str]:
    s = s.lower().replace("-", " ")
    s = re.sub(r"[^a-z0-9' ]+", " ", s)
    return [w.strip("'") for w in s.split() if w.strip("'")]


def _edit_distance(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, wb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wa != wb))
        prev = cur
    return prev[-1]


def wer(references, hypotheses) -> float:
    """Corpus word error rate: sum of word edit distances / number of reference words."""
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    errors = words = 0
    for r, h in zip(references, hypotheses):
        rw, hw = normalize_text(r), normalize_text(h)
        errors += _edit_distance(rw, hw)
        words += len(rw)
    if words == 0:
        raise ValueError("the references have no words")
    return errors / words
