"""Sandboxed rendering of Hugging Face chat templates (jinja2), output-compatible with transformers.

Templates come from model repos, i.e. they are untrusted code: they run in jinja2's
``ImmutableSandboxedEnvironment`` (no attribute access to internals, no mutation of lists/dicts), and any
attempt to reach an unsafe attribute fails immediately with :class:`ChatTemplateError` (wrapping
``jinja2.exceptions.SecurityError``) instead of silently rendering an empty string.

Same environment as transformers: ``trim_blocks`` / ``lstrip_blocks``, the ``loopcontrols`` extension, a
``{% generation %}`` block tag (rendered as-is), the globals ``raise_exception``, ``strftime_now``,
``dict``, ``namespace`` and a ``tojson`` filter that does not HTML-escape (``ensure_ascii=False``,
``indent``, ``separators``, ``sort_keys``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = ["ChatTemplateError", "render_chat_template", "select_chat_template", "compile_chat_template"]


class ChatTemplateError(ValueError):
    """A chat template could not be selected, compiled or rendered (incl. sandbox security violations)."""


def _jinja():
    try:
        import jinja2
        import jinja2.ext
        import jinja2.nodes
        import jinja2.sandbox
    except ImportError as exc:  # pragma: no cover - jinja2 is a hard dependency
        raise ChatTemplateError("chat templates need jinja2 (and markupsafe); install them") from exc
    return jinja2


@functools.lru_cache(maxsize=1)
def _environment_class():
    jinja2 = _jinja()
    from jinja2.exceptions import SecurityError

    class StrictSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
        """Fail loudly on unsafe attribute access (the stock sandbox returns a silent Undefined)."""

        def unsafe_undefined(self, obj, attribute):
            raise SecurityError(
                f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe in a chat template")

    class GenerationBlock(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text; rendered unchanged here."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    return StrictSandbox, GenerationBlock


class _TemplateDict:
    """``dict(...)`` for templates without exposing the ``dict`` type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _make_namespace_class():
    jinja2 = _jinja()
    from jinja2.exceptions import SecurityError

    class TemplateNamespace(jinja2.utils.Namespace):
        """jinja2 ``namespace`` that refuses underscore-prefixed attribute names."""

        def __init__(*args, **kwargs):  # same signature trick as jinja2.utils.Namespace
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"chat templates cannot set underscore-prefixed namespace attributes ({name!r})")

    return TemplateNamespace


def _raise_exception(message):
    jinja2 = _jinja()
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def compile_chat_template(template: str):
    """Compile a template string in the sandbox (cached)."""
    if not isinstance(template, str):
        raise ChatTemplateError(f"a chat template must be a string, got {type(template).__name__}")
    jinja2 = _jinja()
    sandbox_cls, generation_ext = _environment_class()
    env = sandbox_cls(trim_blocks=True, lstrip_blocks=True, extensions=[generation_ext, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _make_namespace_class()
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template syntax error (line {exc.lineno}): {exc.message}") from exc


def select_chat_template(templates: str | list | dict | None, chat_template: str | None = None,
                         tools: Any = None) -> str:
    """Pick the template text like transformers' ``get_chat_template``.

    ``templates`` is the ``chat_template`` of tokenizer_config: a string, or a list of
    ``{"name", "template"}`` (or a name -> template dict). ``chat_template`` may be a template name or a
    full template overriding the model's. With ``tools`` and a ``tool_use`` template, that one is used.
    """
    if isinstance(templates, list):
        try:
            templates = {t["name"]: t["template"] for t in templates}
        except (TypeError, KeyError):
            raise ChatTemplateError("a list chat_template must hold {'name': ..., 'template': ...} entries") from None
    if isinstance(templates, dict):
        if chat_template is not None:
            return templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        raise ChatTemplateError(f"this model has several chat templates and none is named 'default'; pass "
                                f"chat_template=<name>, one of {sorted(templates)}")
    if chat_template is not None:
        return chat_template
    if templates is None:
        raise ChatTemplateError("the tokenizer has no chat_template (tokenizer_config.json / chat_template.jinja) "
                                "and none was passed")
    if not isinstance(templates, str):
        raise ChatTemplateError(f"chat_template must be a string or a list of named templates, got "
                                f"{type(templates).__name__}")
    return templates


def _plain(value: Any) -> Any:
    """Rebuild inputs out of plain JSON-like types so templates cannot reach rich objects' methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        return _plain(value.item())  # numpy scalar
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _prepare_messages(messages) -> list[dict]:
    messages = getattr(messages, "messages", messages)
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for m in messages:
        m = _plain(m)
        if not isinstance(m, dict):
            raise ChatTemplateError(f"chat messages must be dicts, got {m!r}")
        m = {k: v for k, v in m.items() if v is not None}
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def render_chat_template(template: str, messages, add_generation_prompt: bool = False, tools=None,
                         documents=None, continue_final_message: bool | str = False, **kwargs) -> str:
    """Render ``messages`` (list of role/content dicts) with a chat template in the sandbox.

    ``kwargs`` become template variables (e.g. ``bos_token``, ``eos_token``, ``enable_thinking``).
    Errors (including sandbox violations and ``raise_exception``) raise :class:`ChatTemplateError`.
    """
    jinja2 = _jinja()
    compiled = compile_chat_template(template)
    chat = _prepare_messages(messages)
    if tools is not None:
        schemas = []
        for tool in tools:
            if not isinstance(tool, Mapping):
                raise ChatTemplateError(f"tools must be JSON-schema dicts (got {type(tool).__name__}); write the "
                                        "schema as {'type': 'function', 'function': {'name': ..., ...}}")
            schemas.append(tool)
        tools = _plain(schemas)
    if documents is not None:
        if not all(isinstance(d, Mapping) for d in documents):
            raise ChatTemplateError("documents must be a list of dicts with 'title' and 'text' keys")
        documents = _plain(documents)
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be set")
    final_text = None
    if continue_final_message:
        field = continue_final_message if isinstance(continue_final_message, str) else "content"
        final_text = chat[-1].get(field)
        if not isinstance(final_text, str):
            raise ChatTemplateError(f"continue_final_message is set but the final message has no string "
                                    f"{field!r} to continue")
        chat[-1][field] = final_text + _CONTINUE_TAG
    try:
        text = compiled.render(messages=chat, tools=tools, documents=documents,
                               add_generation_prompt=add_generation_prompt, **_plain(kwargs))
    except jinja2.exceptions.SecurityError as exc:
        raise ChatTemplateError(f"the chat template tried an unsafe operation and was stopped by the sandbox: "
                                f"{exc}") from exc
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"the chat template raised an error: {exc}") from exc
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ChatTemplateError(f"rendering the chat template failed: {type(exc).__name__}: {exc}") from exc
    if final_text is not None:
        tag = _CONTINUE_TAG.strip()
        if final_text.strip() not in text or tag not in text:
            raise ChatTemplateError("continue_final_message is set but the final message does not appear in the "
                                    "rendered chat (the template altered it)")
        loc = text.rindex(tag)
        text = text[:loc] if text[loc:loc + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:loc].rstrip()
    return text
