"""Ollama Modelfile templates for the families added with Qwen3/SmolLM3/Granite/OLMo 2/DeepSeek-R1: the
Jinja templates those models ship are recognised, and the Go templates are well formed with their stops."""

from __future__ import annotations

import re

import pytest
import tokfactory

from slimedge.bundle.modelfile import TEMPLATES, chat_family, render_modelfile

RT = {"n_ctx": 4096, "n_batch": 512, "n_threads": 0, "n_gpu_layers": 0}

# excerpts of the templates the real checkpoints ship (tokenizer_config.json / chat_template.jinja)
QWEN3 = ("{%- for message in messages %}{%- if message.role == \"user\" %}{{- '<|im_start|>' + message.role + '\\n' + "
         "message.content + '<|im_end|>' + '\\n' }}{%- elif message.role == \"assistant\" %}{%- if '</think>' in "
         "message.content %}{%- set content = message.content.split('</think>')[-1] %}{%- endif %}{{- '<|im_start|>' "
         "+ message.role + '\\n<think>\\n' + reasoning_content + '\\n</think>\\n\\n' + content }}{%- endif %}{%- endfor %}"
         "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and "
         "enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")
SMOLLM3 = ("{%- if '/no_think' in system_message -%}{%- set reasoning_mode = '/no_think' -%}{%- endif -%}"
           "{{- '<|im_start|>system\\n' + system_message + '<|im_end|>\\n' -}}{%- for message in messages -%}"
           "{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endfor -%}"
           "{%- if add_generation_prompt -%}{%- if reasoning_mode == '/think' -%}{{ '<|im_start|>assistant\\n' }}"
           "{%- else -%}{{ '<|im_start|>assistant\\n' + '<think>\\n\\n</think>\\n' }}{%- endif -%}{%- endif -%}")
GRANITE = ("{%- for message in messages %}{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + "
           "message['content'] + '<|end_of_text|>\\n' }}{%- if loop.last and add_generation_prompt %}"
           "{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}{%- endfor %}")
OLMO2 = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n' + "
         "message['content'] + '\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
         "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
         "{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}")
FAMILIES = {"chatml-think": [QWEN3, SMOLLM3], "granite": [GRANITE], "olmo2": [OLMO2],
            "deepseek-r1": [tokfactory._DEEPSEEK_R1_TEMPLATE], "gemma": ["GEMMA3"]}


@pytest.mark.parametrize("family, jinja", [(f, j) for f, js in FAMILIES.items() for j in js])
def test_family_recognised_and_written(family, jinja):
    jinja = globals()[jinja] if jinja == "GEMMA3" else jinja  # defined further down
    assert chat_family(jinja) == family
    text = render_modelfile("model.gguf", RT, jinja, "Tiny")
    tmpl, stops = TEMPLATES[family]
    assert f'TEMPLATE """{tmpl}"""' in text and f"# chat format: {family}" in text
    assert [line for line in text.splitlines() if line.startswith("PARAMETER stop")] == \
        [f'PARAMETER stop "{s}"' for s in stops]
    assert "{%" not in text


def test_plain_chatml_and_zephyr_are_not_taken_for_the_new_families():
    assert chat_family(tokfactory._CHATML_TEMPLATE) == "chatml"
    zephyr = ("{% for message in messages %}{{ '<|user|>\n' + message['content'] + eos_token }}{% endfor %}"
              "{{ '<|assistant|>' }}")
    assert chat_family(zephyr) == "zephyr"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_go_templates_are_balanced(family):
    """Every if/range opens one block that one end closes, never below zero (Go's parser would refuse)."""
    tmpl = TEMPLATES[family][0]
    depth = 0
    for action in re.findall(r"\{\{-?\s*(.*?)\s*-?\}\}", tmpl):
        word = action.split(" ", 1)[0]
        if word in ("if", "range", "with"):
            depth += 1
        elif word == "end":
            depth -= 1
        elif word == "else":
            assert depth > 0
        assert depth >= 0, (family, action)
    assert depth == 0 and tmpl.count("{{") == tmpl.count("}}")


def test_thinking_template_opens_and_closes_think():
    tmpl = TEMPLATES["chatml-think"][0]
    assert "$.IsThinkSet" in tmpl and "(not $.Think)" in tmpl and ".Thinking" in tmpl
    assert tmpl.count("<think>") == tmpl.count("</think>") == 2
    assert tmpl.endswith("{{ end -}}{{ end }}{{- end }}")


# Gemma 3's chat template (tokenizer_config.json, text-only parts): no system role — the system prompt opens
# the first user turn; Gemma 2's refuses a system message, otherwise the same
GEMMA3 = ("{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = "
          "messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}"
          "{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}"
          "{%- for message in loop_messages -%}{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
          "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}{{ '<start_of_turn>' + role + '\\n' + "
          "(first_user_prefix if loop.first else \"\") }}{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}"
          "{%- endfor -%}{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}")

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(r'\(|\)|"[^"]*"|[^\s()]+')


def _go_render(tmpl: str, values: dict) -> str:
    """Render the subset of Go's text/template the Modelfile templates use (if/else if/else/range/end,
    $var := / =, eq ne and not len slice, .Field, $.Field, trim markers), as Ollama's Go would."""
    parts, pos = [], 0
    for m in _ACTION.finditer(tmpl):
        parts += [("text", tmpl[pos:m.start()]), ("act", m.group(2), m.group(1), m.group(3))]
        pos = m.end()
    parts.append(("text", tmpl[pos:]))
    for i, p in enumerate(parts):  # trim markers eat the whitespace next to them
        if p[0] == "act" and p[2] and i and parts[i - 1][0] == "text":
            parts[i - 1] = ("text", parts[i - 1][1].rstrip())
        if p[0] == "act" and p[3] and i + 1 < len(parts) and parts[i + 1][0] == "text":
            parts[i + 1] = ("text", parts[i + 1][1].lstrip())
    out, scopes = [], [{"$": values}]

    def expr(toks, dot):
        def one():
            t = toks.pop(0)
            if t == "(":
                v = call()
                assert toks.pop(0) == ")"
                return v
            if t.startswith('"'):
                return t[1:-1]
            if t.isdigit():
                return int(t)
            if t.startswith("$."):
                return scopes[0]["$"][t[2:]]
            if t.startswith("$"):
                return next(s[t] for s in reversed(scopes) if t in s)
            if t.startswith("."):
                return dot[t[1:]]
            return t

        def call():
            f = toks[0]
            fns = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "and": lambda a, b: a and b,
                   "not": lambda a: not a, "len": len, "slice": lambda x, i: x[i:]}
            if f in fns:
                toks.pop(0)
                args = []
                while toks and toks[0] != ")":
                    args.append(one())
                return fns[f](*args)
            return one()

        return call()

    def run(i, dot, emit):  # runs parts from i until an end/else at this level; returns (index, word)
        while i < len(parts):
            p = parts[i]
            if p[0] == "text":
                if emit:
                    out.append(p[1])
                i += 1
                continue
            toks = _TOKEN.findall(p[1])
            word = toks[0]
            if word in ("end", "else"):
                return i, p[1]
            if word == "if":
                taken = False
                cond = emit and bool(expr(toks[1:], dot))
                while True:
                    i, stop = run(i + 1, dot, emit and cond and not taken)
                    taken = taken or cond
                    if stop == "end":
                        break
                    rest = _TOKEN.findall(stop)[1:]
                    cond = emit and not taken and (not rest or bool(expr(rest[1:], dot)))
                i += 1
            elif word == "range":
                named = toks[1].startswith("$")  # range $i, $_ := LIST  or  range LIST
                k, v = (toks[1].rstrip(","), toks[2]) if named else ("$i", "$_")
                items = expr(toks[4:] if named else toks[1:], dot) if emit else []
                end = None
                for n, item in enumerate(items):
                    scopes.append({k: n, v: item})
                    end, _ = run(i + 1, item, True)
                    scopes.pop()
                if end is None:
                    end, _ = run(i + 1, dot, False)
                i = end + 1
            elif len(toks) > 1 and toks[1] in (":=", "="):
                if emit:
                    value = expr(toks[2:], dot)
                    scope = scopes[-1] if toks[1] == ":=" else next(s for s in reversed(scopes) if word in s)
                    scope[word] = value
                i += 1
            else:
                if emit:
                    out.append(str(expr(toks, dot)))
                i += 1
        return i, None

    run(0, values, True)
    return "".join(out)


def _ollama_values(messages):
    """What Ollama passes a .Messages template: every system message joined in .System, and the messages
    (system ones included) with consecutive same-role turns merged (ollama/template: collate)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    merged = []
    for m in messages:
        if merged and merged[-1]["Role"] == m["role"]:
            merged[-1]["Content"] += "\n\n" + m["content"]
        else:
            merged.append({"Role": m["role"], "Content": m["content"]})
    return {"System": system, "Messages": merged}


CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief.\nAnd kind."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system", "multi-turn", "no-system"])
def test_gemma_prompt_folds_the_system_prompt_into_the_first_user_turn(messages):
    """Ollama's prompt from the Gemma Go template equals Gemma 3's Jinja template's, system prompt included."""
    import jinja2

    assert chat_family(GEMMA3) == "gemma"
    want = jinja2.Template(GEMMA3).render(messages=messages, add_generation_prompt=True, bos_token="")
    got = _go_render(TEMPLATES["gemma"][0], _ollama_values(messages))
    assert got == want
    if messages[0]["role"] == "system":
        assert got.startswith(f"<start_of_turn>user\n{messages[0]['content']}\n\nHi<end_of_turn>\n")
        assert "system" not in got
    assert got.endswith("<end_of_turn>\n<start_of_turn>model\n")


def test_gemma_stops_at_end_of_turn():
    text = render_modelfile("model.gguf", RT, GEMMA3, "Gemma")
    assert 'PARAMETER stop "<end_of_turn>"' in text and "# chat format: gemma" in text


def test_go_render_knows_the_chatml_template():
    """The renderer itself, on a template whose output is easy to write down."""
    got = _go_render(TEMPLATES["chatml"][0], {"System": "S", "Messages": [{"Role": "user", "Content": "Hi"}]})
    assert got == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
