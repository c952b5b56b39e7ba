"""Gemma 4's chat format in bundles' Ollama Modelfile: recognised from the Jinja template Gemma 4 ships (its
``<|turn>`` markers, not Gemma 3's ``<start_of_turn>``), and the Go template gives the prompt that template
gives for each conversation, with thinking off (an empty thought channel closes the prompt) and on."""

from __future__ import annotations

import pytest
from tests.bundle.go_template import go_render, ollama_values

from slimedge.bundle.modelfile import TEMPLATES, chat_family, render_modelfile

RT = {"n_ctx": 4096, "n_batch": 512, "n_threads": 0, "n_gpu_layers": 0}
# the parts of Gemma 4's chat_template.jinja that fix a plain conversation's prompt (tools, images, audio and
# the stripping of earlier thoughts left out): an optional system turn (<|think|> first when thinking is on),
# user/model turns, and the generation prompt
GEMMA4_JINJA = (
    "{{- bos_token -}}{%- set loop_messages = messages -%}"
    "{%- if (enable_thinking is defined and enable_thinking) or messages[0]['role'] in ['system', 'developer'] -%}"
    "{{- '<|turn>system\\n' -}}{%- if enable_thinking is defined and enable_thinking -%}{{- '<|think|>\\n' -}}"
    "{%- endif -%}{%- if messages[0]['role'] in ['system', 'developer'] -%}{{- messages[0]['content'] | trim -}}"
    "{%- set loop_messages = messages[1:] -%}{%- endif -%}{{- '<turn|>\\n' -}}{%- endif -%}"
    "{%- for message in loop_messages -%}{%- set role = 'model' if message['role'] == 'assistant' else "
    "message['role'] -%}{{- '<|turn>' + role + '\\n' -}}{{- message['content'] | trim -}}{{- '<turn|>\\n' -}}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}"
    "{%- if not enable_thinking | default(false) -%}{{- '<|channel>thought\\n<channel|>' -}}{%- endif -%}"
    "{%- endif -%}")
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief.\nAnd kind."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2"}],
]


def test_gemma4_template_recognised_with_its_stops():
    assert chat_family(GEMMA4_JINJA) == "gemma4"
    text = render_modelfile("model.gguf", RT, GEMMA4_JINJA, "Gemma 4")
    assert "# chat format: gemma4" in text and 'PARAMETER stop "<turn|>"' in text
    assert f'TEMPLATE """{TEMPLATES["gemma4"][0]}"""' in text and "{%" not in text


@pytest.mark.parametrize("think", [False, True], ids=["no-thinking", "thinking"])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system", "multi-turn", "no-system"])
def test_gemma4_prompt_equals_the_jinja_template(messages, think):
    import jinja2

    want = jinja2.Template(GEMMA4_JINJA).render(messages=messages, add_generation_prompt=True, bos_token="",
                                                enable_thinking=think)
    values = {**ollama_values(messages), "IsThinkSet": think, "Think": think}
    got = go_render(TEMPLATES["gemma4"][0], values)
    assert got == want
    assert got.endswith("<|turn>model\n" if think else "<|turn>model\n<|channel>thought\n<channel|>")
    assert ("<|think|>" in got) == think
