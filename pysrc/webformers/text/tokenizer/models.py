"""Tokenizer models (the ``model`` entry of tokenizer.json): ``build_model(spec)`` returns an object with
``vocab``, ``unk_token``, ``token_to_id(token)`` and ``tokenize(word) -> ids``.

Supported types: ``BPE`` (ByteLevel or SentencePiece style: ``byte_fallback``, ``fuse_unk``,
``ignore_merges``, ``continuing_subword_prefix``, ``end_of_word_suffix``) and ``WordPiece``.
"""
from __future__ import annotations

import heapq

from .errors import TokenizerError

__all__ = ["BPEModel", "WordPieceModel", "build_model"]


class BPEModel:
    """Byte-pair encoding with HF semantics (priority-queue merges, per-word cache)."""

    CACHE_SIZE = 20000

    def __init__(self, spec: dict):
        self.vocab: dict[str, int] = dict(spec.get("vocab") or {})
        self.unk_token = spec.get("unk_token")
        self.prefix = spec.get("continuing_subword_prefix") or ""
        self.suffix = spec.get("end_of_word_suffix") or ""
        self.fuse_unk = bool(spec.get("fuse_unk", False))
        self.byte_fallback = bool(spec.get("byte_fallback", False))
        self.ignore_merges = bool(spec.get("ignore_merges", False))
        if self.unk_token is not None and self.unk_token not in self.vocab:
            raise TokenizerError(f"BPE unk_token {self.unk_token!r} is not in the vocabulary")
        table = spec.get("merge_table")  # already resolved in the compact form (``compact.py``)
        self.merges: dict[tuple[int, int], tuple[int, int]] = (
            table if isinstance(table, dict) else self._resolve_merges(spec.get("merges") or []))
        self._byte_ids = [self.vocab.get(f"<0x{b:02X}>") for b in range(256)]
        self._cache: dict[str, list[int]] = {}

    def _resolve_merges(self, merges) -> dict[tuple[int, int], tuple[int, int]]:
        """``{(left id, right id): (rank, merged id)}`` from tokenizer.json's ``merges`` (strings or pairs)."""
        out: dict[tuple[int, int], tuple[int, int]] = {}
        plen = len(self.prefix)
        for rank, m in enumerate(merges):
            if isinstance(m, str):
                parts = m.split(" ")
                if len(parts) != 2:
                    raise TokenizerError(f"BPE merge #{rank} {m!r} must be two tokens separated by one space")
                a, b = parts
            else:
                a, b = m
            try:
                ia, ib = self.vocab[a], self.vocab[b]
                new = self.vocab[a + b[plen:]]
            except KeyError as exc:
                raise TokenizerError(f"BPE merge #{rank} ({a!r}, {b!r}) uses a token missing from the "
                                     f"vocabulary: {exc.args[0]!r}") from None
            out.setdefault((ia, ib), (rank, new))
        return out

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def _initial(self, word: str) -> list[int]:
        ids: list[int] = []
        unk: list[int] | None = None  # [unk_id] pending (fused)
        vocab = self.vocab
        last = len(word) - 1
        for i, ch in enumerate(word):
            s = ch
            if i > 0 and self.prefix:
                s = self.prefix + s
            if i == last and self.suffix:
                s = s + self.suffix
            tid = vocab.get(s)
            if tid is not None:
                if unk is not None:
                    ids.append(unk[0])
                    unk = None
                ids.append(tid)
                continue
            if self.byte_fallback:
                bids = [self._byte_ids[b] for b in s.encode("utf-8")]
                if all(b is not None for b in bids):
                    ids.extend(bids)
                    continue
            if self.unk_token is not None:
                uid = vocab[self.unk_token]
                if unk is None:
                    unk = [uid]
                elif not self.fuse_unk:
                    ids.append(unk[0])
                    unk = [uid]
        if unk is not None:
            ids.append(unk[0])
        return ids

    def _merge(self, sym: list[int]) -> list[int]:
        n = len(sym)
        if n < 2:
            return sym
        merges = self.merges
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []
        for i in range(n - 1):
            m = merges.get((sym[i], sym[i + 1]))
            if m is not None:
                heap.append((m[0], i, m[1]))
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            rank, i, new = pop(heap)
            if not alive[i]:
                continue
            j = nxt[i]
            if j == -1:
                continue
            m = merges.get((sym[i], sym[j]))
            if m is None or m[1] != new:
                continue
            sym[i] = new
            alive[j] = False
            k = nxt[j]
            nxt[i] = k
            if k != -1:
                prv[k] = i
                m = merges.get((new, sym[k]))
                if m is not None:
                    push(heap, (m[0], i, m[1]))
            p = prv[i]
            if p != -1:
                m = merges.get((sym[p], new))
                if m is not None:
                    push(heap, (m[0], p, m[1]))
        return [s for s, a in zip(sym, alive) if a]

    def tokenize(self, word: str) -> list[int]:
        if not word:
            return []
        if self.ignore_merges:
            tid = self.vocab.get(word)
            if tid is not None:
                return [tid]
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        out = self._merge(self._initial(word))
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[word] = out
        return out


class WordPieceModel:
    """Greedy longest-match-first WordPiece (BERT)."""

    def __init__(self, spec: dict):
        self.vocab: dict[str, int] = dict(spec.get("vocab") or {})
        self.unk_token = spec.get("unk_token", "[UNK]")
        self.prefix = spec.get("continuing_subword_prefix", "##")
        self.max_chars = int(spec.get("max_input_chars_per_word", 100))
        if self.unk_token not in self.vocab:
            raise TokenizerError(f"WordPiece unk_token {self.unk_token!r} is not in the vocabulary")

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def tokenize(self, word: str) -> list[int]:
        if not word:
            return []
        unk = [self.vocab[self.unk_token]]
        if len(word) > self.max_chars:
            return unk
        out, start, n = [], 0, len(word)
        while start < n:
            end, found = n, None
            while start < end:
                sub = word[start:end]
                if start > 0:
                    sub = self.prefix + sub
                tid = self.vocab.get(sub)
                if tid is not None:
                    found = tid
                    break
                end -= 1
            if found is None:
                return unk
            out.append(found)
            start = end
        return out


def build_model(spec: dict):
    """The model ``spec`` describes (the type is inferred from its fields when ``type`` is absent)."""
    t = spec.get("type")
    if t is None:
        t = "BPE" if "merges" in spec else ("WordPiece" if "max_input_chars_per_word" in spec else None)
    if t == "BPE":
        return BPEModel(spec)
    if t == "WordPiece":
        return WordPieceModel(spec)
    raise TokenizerError(f"unsupported tokenizer model type {t!r}; supported: BPE, WordPiece")

