"""Ollama Modelfile templates for Ministral 3 (Mistral v7, tekken spacing) and EXAONE 4: recognised from the Jinja
templates those checkpoints ship (excerpts in their format) and rendering, through Ollama's values, the same prompt
as the Jinja template. OLMo 3 ships ChatML (already known); ERNIE 4.5 and the base classics get no TEMPLATE."""

from __future__ import annotations

import pytest

from slimedge.bundle.modelfile import TEMPLATES, chat_family, render_modelfile
from tests.bundle.go_template import go_render, ollama_values

RT = {"n_ctx": 4096, "n_batch": 512, "n_threads": 0, "n_gpu_layers": 0}

# Ministral 3 / Mistral Small 3.x (text part; the real one also writes a default system prompt when none is given)
MINISTRAL3 = ("{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + messages[0]['content'] "
              "+ '[/SYSTEM_PROMPT]' -}}{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}"
              "{%- endif %}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}{{- '[INST]' + "
              "message['content'] + '[/INST]' }}{%- elif message['role'] == 'assistant' %}{{- message['content'] + "
              "eos_token }}{%- endif %}{%- endfor %}")
# EXAONE 4.0 (no tools, non-reasoning mode)
EXAONE4 = ("{%- for message in messages %}{%- if message.role == 'system' %}{{- '[|system|]' + message.content + "
           "'[|endofturn|]\\n' }}{%- elif message.role == 'user' %}{{- '[|user|]' + message.content + '\\n' }}"
           "{%- elif message.role == 'assistant' %}{{- '[|assistant|]' + message.content + '[|endofturn|]\\n' }}"
           "{%- elif message.role == 'tool' %}{{- '[|tool|]' + message.content + '[|endofturn|]\\n' }}{%- endif %}"
           "{%- endfor %}{%- if add_generation_prompt %}{{- '[|assistant|]' }}{%- endif %}")
ERNIE45 = ("{{- '<|begin_of_sentence|>' -}}{%- for message in messages -%}{%- if message['role'] == 'user' -%}"
           "{{- 'User: ' + message['content'] + '\\n' -}}{%- elif message['role'] == 'assistant' -%}{{- 'Assistant: ' + "
           "message['content'] + '<|end_of_sentence|>' -}}{%- endif -%}{%- endfor -%}{{- 'Assistant: ' -}}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"}],
]


@pytest.mark.parametrize("family, jinja", [("mistral-v7", MINISTRAL3), ("exaone4", EXAONE4)])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system", "multi-turn"])
def test_go_template_renders_the_jinja_prompt(family, jinja, messages):
    import jinja2

    assert chat_family(jinja) == family
    want = jinja2.Template(jinja).render(messages=messages, add_generation_prompt=True, bos_token="",
                                         eos_token="</s>")
    assert go_render(TEMPLATES[family][0], ollama_values(messages)) == want


def test_modelfile_stops_and_the_families_without_a_template():
    text = render_modelfile("model.gguf", RT, EXAONE4, "Exaone")
    assert 'PARAMETER stop "[|endofturn|]"' in text and "# chat format: exaone4" in text
    assert 'PARAMETER stop "[INST]"' in render_modelfile("model.gguf", RT, MINISTRAL3, "Ministral")
    assert chat_family("{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}") == "llama2"
    ernie = render_modelfile("model.gguf", RT, ERNIE45, "Ernie")
    assert chat_family(ERNIE45) is None and "no TEMPLATE is written" in ernie and "TEMPLATE \"\"\"" not in ernie
