"""Ollama Modelfile templates for the families added with Qwen3/SmolLM3/Granite/OLMo 2/DeepSeek-R1: the
Jinja templates those models ship are recognised, and the Go templates are well formed with their stops."""

from __future__ import annotations

import re

import pytest
from tests import tokfactory

from tests.bundle.go_template import go_render, ollama_values

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
    got = go_render(TEMPLATES["gemma"][0], ollama_values(messages))
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
    got = go_render(TEMPLATES["chatml"][0], {"System": "S", "Messages": [{"Role": "user", "Content": "Hi"}]})
    assert got == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_system_prompt_rendered_once(family):
    """Ollama passes system messages both in .System and in .Messages: a template shows them once."""
    messages = [{"role": "system", "content": "Be brief and kind."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"}]
    got = go_render(TEMPLATES[family][0], ollama_values(messages))
    assert got.count("Be brief and kind.") == 1, got
    assert got.count("Hi") == 1 and got.count("Hello!") == 1 and got.count("Why?") == 1, got
