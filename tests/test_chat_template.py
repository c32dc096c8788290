"""Chat templates: output identical to transformers' apply_chat_template, and a sandbox that bites."""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import jinja2
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tokenizer_fixtures as fx  # noqa: E402

from webformers.text.chat_template import ChatTemplateError, render_chat_template, select_chat_template  # noqa: E402
from webformers.text.tokenizer import Tokenizer  # noqa: E402

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city — «quoted» & <tagged>",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Ville"}},
                       "required": ["city"]},
    },
}]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3? Answer in 日本語 😀"}],
    [{"role": "user", "content": "Line one\nline two\r\n\ttabbed"}, {"role": "assistant", "content": ""},
     {"role": "user", "content": "<|im_start|> inside user text"}],
    [{"role": "user", "content": "Weather in Paris?"},
     {"role": "assistant", "content": None, "tool_calls": [
         {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
     {"role": "tool", "name": "get_weather", "content": "{\"temp\": 21}"}],
]

# A tool-calling template in the style of current instruct models (written for this test): system message
# handling, tojson with indent, namespace, loop controls, tool calls and tool responses, raise_exception.
TOOL_TEMPLATE = """\
{%- set ns = namespace(system=none, last_user=-1) -%}
{%- if messages[0]['role'] == 'system' %}{% set ns.system = messages[0]['content'] %}{% endif -%}
{%- for m in messages %}{% if m['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor -%}
<|im_start|>system
{{ ns.system if ns.system is not none else 'You are a helpful assistant.' }}
{%- if tools %}

# Tools
<tools>
{% for tool in tools %}
{{ tool | tojson(indent=2) }}
{% endfor %}
</tools>
{%- endif %}<|im_end|>
{% for message in messages %}
{%- if message.role == 'system' %}{% continue %}{% endif %}
{%- if message.role not in ['user', 'assistant', 'tool'] %}{{ raise_exception('Unknown role: ' + message.role) }}{% endif %}
<|im_start|>{{ message.role }}
{% if message.content is defined %}{{ message.content }}{% endif %}
{%- if message.tool_calls is defined %}
{%- for call in message.tool_calls %}
<tool_call>
{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}
</tool_call>
{%- endfor %}
{%- endif %}
{%- if loop.index0 == ns.last_user %} (last user turn){% endif %}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="session")
def smollm2_dir():
    return fx.smollm2_tokenizer_dir()


@pytest.fixture(scope="session")
def tokenizers_pair(smollm2_dir):
    from transformers import AutoTokenizer as HFAuto

    return Tokenizer.from_directory(smollm2_dir), HFAuto.from_pretrained(str(smollm2_dir))


def _hf_ids(hf, conv, **kw):
    out = hf.apply_chat_template(conv, tokenize=True, return_dict=False, **kw)
    return list(out)


@pytest.mark.parametrize("conv", CONVERSATIONS, ids=["single", "multi-turn", "whitespace", "tool-calls"])
@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("with_tools", [False, True])
def test_smollm2_template_matches_transformers(tokenizers_pair, conv, gen, with_tools):
    ours, hf = tokenizers_pair
    tools = TOOLS if with_tools else None
    try:
        want = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen, tools=tools)
    except jinja2.exceptions.UndefinedError:
        # SmolLM2's template concatenates message['content'], which a tool-call message lacks: both fail
        with pytest.raises(ChatTemplateError, match="no attribute 'content'"):
            ours.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen, tools=tools)
        return
    got = ours.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen, tools=tools)
    assert got == want
    assert ours.apply_chat_template(conv, add_generation_prompt=gen, tools=tools) == _hf_ids(
        hf, conv, add_generation_prompt=gen, tools=tools)
    assert want.startswith("<|im_start|>system\n")


@pytest.mark.parametrize("conv", CONVERSATIONS, ids=["single", "multi-turn", "whitespace", "tool-calls"])
@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("with_tools", [False, True])
def test_tool_template_matches_transformers(tokenizers_pair, conv, gen, with_tools):
    ours, hf = tokenizers_pair
    tools = TOOLS if with_tools else None
    want = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen, tools=tools,
                                  chat_template=TOOL_TEMPLATE)
    got = ours.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen, tools=tools,
                                   chat_template=TOOL_TEMPLATE)
    assert got == want
    if with_tools:
        assert '"description": "Weather in a city — «quoted» & <tagged>"' in got  # no HTML escaping / \\u


def test_continue_final_message_and_kwargs(tokenizers_pair):
    ours, hf = tokenizers_pair
    conv = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi, I am"}]
    want = hf.apply_chat_template(conv, tokenize=False, continue_final_message=True)
    assert ours.apply_chat_template(conv, tokenize=False, continue_final_message=True) == want
    assert want.endswith("Hi, I am")
    tpl = "{{ bos_token }}|{{ eos_token }}|{{ custom }}|{{ messages | length }}"
    got = ours.apply_chat_template(conv, tokenize=False, chat_template=tpl, custom="x")
    assert got == hf.apply_chat_template(conv, tokenize=False, chat_template=tpl, custom="x")
    assert got == "<|im_start|>|<|im_end|>|x|2"
    d = ours.apply_chat_template(conv, return_dict=True)
    assert d["input_ids"] == _hf_ids(hf, conv) and d["attention_mask"] == [1] * len(d["input_ids"])


def test_named_templates_selection(tokenizers_pair):
    ours, hf = tokenizers_pair
    default, tool_use = "D:{{ messages[0].content }}", "T:{{ tools | length }}"
    named = [{"name": "default", "template": default}, {"name": "tool_use", "template": tool_use}]
    tok = Tokenizer.from_json({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}},
                              {"chat_template": named})
    conv = CONVERSATIONS[0]
    assert tok.apply_chat_template(conv, tokenize=False) == "D:Hi there"
    assert tok.apply_chat_template(conv, tokenize=False, tools=TOOLS) == "T:1"
    assert tok.apply_chat_template(conv, tokenize=False, chat_template="tool_use", tools=[]) == "T:0"
    hf.chat_template = {"default": default, "tool_use": tool_use}
    try:
        assert hf.apply_chat_template(conv, tokenize=False, tools=TOOLS) == "T:1"
    finally:
        hf.chat_template = (fx.smollm2_tokenizer_dir() / "chat_template.jinja").read_text()
    with pytest.raises(ChatTemplateError, match="none is named 'default'"):
        select_chat_template([{"name": "a", "template": "x"}])
    with pytest.raises(ChatTemplateError, match="no chat_template"):
        select_chat_template(None)


def test_helpers_tojson_strftime_raise():
    conv = [{"role": "user", "content": "é"}]
    assert render_chat_template("{{ {'k': messages[0].content, 'n': [1, 2]} | tojson }}", conv) == \
        '{"k": "é", "n": [1, 2]}'
    assert render_chat_template("{{ messages | tojson(indent=2) }}", conv) == \
        '[\n  {\n    "role": "user",\n    "content": "é"\n  }\n]'
    assert render_chat_template("{{ strftime_now('%Y-%m-%d') }}", conv) == datetime.now().strftime("%Y-%m-%d")
    with pytest.raises(ChatTemplateError, match="Only user and assistant roles"):
        render_chat_template("{{ raise_exception('Only user and assistant roles') }}", conv)
    with pytest.raises(ChatTemplateError, match="syntax error"):
        render_chat_template("{% if %}", conv)


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% set x = [] %}{{ x.append(1) }}",
    "{% set d = {} %}{{ d.update({'a': 1}) }}",
    "{{ messages.pop() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{% set ns = namespace() %}{% set ns._private = 1 %}",
    "{{ raise_exception.__globals__ }}",
])
def test_sandbox_blocks_escapes(template):
    with pytest.raises(ChatTemplateError, match="unsafe|underscore") as info:
        render_chat_template(template, [{"role": "user", "content": "x"}])
    assert isinstance(info.value.__cause__, jinja2.exceptions.SecurityError)


def test_bad_inputs():
    with pytest.raises(ChatTemplateError, match="non-empty list"):
        render_chat_template("{{ 1 }}", [])
    with pytest.raises(ChatTemplateError, match="JSON-schema dicts"):
        render_chat_template("{{ 1 }}", [{"role": "user", "content": "x"}], tools=[print])


def test_pure_wheels_render_chat_in_clean_interpreter(tmp_path, tokenizers_pair, smollm2_dir):
    """buildtools.pywheels: jinja2 + pure markupsafe wheels alone (no site-packages, as in Pyodide) render the
    SmolLM2 chat template and tokenize it exactly like transformers."""
    import json
    import subprocess

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from buildtools.pywheels import build_pure_wheels

    cache = Path.home() / ".cache" / "webformers" / "pywheels"
    wheels = build_pure_wheels(tmp_path / "wheels", cache)
    assert [w.name for w in wheels] == ["jinja2-3.1.6-py3-none-any.whl", "markupsafe-3.0.3-py3-none-any.whl"]
    _, hf = tokenizers_pair
    conv = CONVERSATIONS[1]
    want_text = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    want_ids = _hf_ids(hf, conv, add_generation_prompt=True)
    pysrc = Path(__file__).resolve().parents[1] / "pysrc"
    code = (
        "import importlib.util, json, sys\n"
        "sys.path[:0] = json.loads(sys.argv[1])\n"
        "from webformers.text.tokenizer import Tokenizer\n"
        "tok = Tokenizer.from_directory(sys.argv[2])\n"
        "conv = json.loads(sys.argv[3])\n"
        "text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)\n"
        "ids = tok.apply_chat_template(conv, add_generation_prompt=True)\n"
        "import markupsafe, jinja2\n"
        "assert importlib.util.find_spec('markupsafe._speedups') is None\n"
        "assert importlib.util.find_spec('numpy') is None  # truly no site-packages\n"
        "print(json.dumps({'text': text, 'ids': ids, 'ms': markupsafe.__file__, 'j2': jinja2.__file__}))\n"
    )
    paths = [str(w) for w in wheels] + [str(pysrc)]
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, json.dumps(paths), str(smollm2_dir),
                           json.dumps(conv)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["text"] == want_text and out["ids"] == want_ids
    assert out["ms"].startswith(str(wheels[1])) and out["j2"].startswith(str(wheels[0]))
