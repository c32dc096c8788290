"""Post-processors (the ``post_processor`` entry of tokenizer.json): ``build_post_processor(spec)`` returns
``(ids_a, ids_b | None, add_special_tokens) -> ids`` with a ``num_special(is_pair)`` attribute, or None
when ids are left as they are.

Supported types: TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel (ids unchanged), Sequence.
"""
from __future__ import annotations

from .errors import TokenizerError

__all__ = ["build_post_processor"]


def build_post_processor(spec: dict | None):
    """The post-processor ``spec`` describes (None when it does not change ids)."""
    if spec is None:
        return None
    t = spec.get("type")
    if t == "ByteLevel":
        return None  # only trims offsets: ids are unchanged
    if t == "TemplateProcessing":
        specials = {name: list(v["ids"]) for name, v in (spec.get("special_tokens") or {}).items()}

        def compile_template(pieces):
            out = []
            for piece in pieces or []:
                if "SpecialToken" in piece:
                    name = piece["SpecialToken"]["id"]
                    if name not in specials:
                        raise TokenizerError(f"TemplateProcessing uses special token {name!r} that is not in "
                                             f"special_tokens ({sorted(specials)})")
                    out.append(("special", name))
                elif "Sequence" in piece:
                    out.append(("seq", piece["Sequence"]["id"]))
                else:
                    raise TokenizerError(f"bad TemplateProcessing piece {piece!r}")
            return out

        single, pair = compile_template(spec.get("single")), compile_template(spec.get("pair"))

        def template(a, b, add_special):
            if not add_special:
                return a + (b or [])
            out = []
            for kind, val in (single if b is None else pair):
                if kind == "special":
                    out.extend(specials[val])
                else:
                    out.extend(a if val == "A" else (b or []))
            return out
        template.num_special = (lambda is_pair: sum(len(specials[v]) for k, v in (pair if is_pair else single)
                                                    if k == "special"))
        return template
    if t in ("BertProcessing", "RobertaProcessing"):
        sep, cls = spec["sep"][1], spec["cls"][1]
        roberta = t == "RobertaProcessing"

        def bert(a, b, add_special):
            if not add_special:
                return a + (b or [])
            out = [cls] + a + [sep]
            if b is not None:
                out += ([sep] if roberta else []) + b + [sep]
            return out
        bert.num_special = lambda is_pair: (2 if not is_pair else (4 if roberta else 3))
        return bert
    if t == "Sequence":
        parts = [build_post_processor(p) for p in spec.get("processors", [])]
        parts = [p for p in parts if p is not None]
        if not parts:
            return None

        def seq(a, b, add_special):
            # Only one processor in practice adds tokens (ByteLevel ones only trim offsets).
            ids = parts[0](a, b, add_special)
            return ids
        if len(parts) > 1:
            raise TokenizerError("a post-processor Sequence with more than one id-changing processor is not "
                                 "supported (ByteLevel entries are fine)")
        seq.num_special = parts[0].num_special
        return seq
    raise TokenizerError(f"unsupported post-processor type {t!r}; supported: TemplateProcessing, BertProcessing, "
                         "RobertaProcessing, ByteLevel, Sequence")

