"""gpt-oss's harmony chat format in bundles' Ollama Modelfile: recognised from the Jinja template gpt-oss ships
(its markers), and the Go template gives the prompt the harmony format prescribes for each conversation."""

from __future__ import annotations

import pytest

from slimedge.bundle.modelfile import TEMPLATES, chat_family, render_modelfile
from tests.bundle.go_template import go_render, ollama_values

RT = {"n_ctx": 4096, "n_batch": 512, "n_threads": 0, "n_gpu_layers": 0}
# the parts of gpt-oss's chat_template.jinja that fix a plain conversation's prompt (tools, reasoning effort
# and dates left out): system header, developer instructions, user turns, past answers in the final channel
HARMONY_JINJA = (
    "{{- '<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\\n' -}}"
    "{{- 'Knowledge cutoff: 2024-06\\n\\nReasoning: medium\\n\\n# Valid channels: analysis, commentary, final. "
    "Channel must be included for every message.<|end|>' -}}"
    "{%- if messages[0].role == 'system' -%}{{- '<|start|>developer<|message|># Instructions\\n\\n' + "
    "messages[0].content + '<|end|>' -}}{%- set loop_messages = messages[1:] -%}{%- else -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}{%- if message.role == 'user' -%}"
    "{{- '<|start|>user<|message|>' + message.content + '<|end|>' -}}{%- else -%}"
    "{{- '<|start|>assistant<|channel|>final<|message|>' + message.content + '<|end|>' -}}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}")
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief.\nAnd kind."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"}],
]


def test_harmony_recognised_with_its_stops():
    assert chat_family(HARMONY_JINJA) == "harmony"
    text = render_modelfile("model.gguf", RT, HARMONY_JINJA, "gpt-oss")
    assert "# chat format: harmony" in text and f'TEMPLATE """{TEMPLATES["harmony"][0]}"""' in text
    stops = [line for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ['PARAMETER stop "<|return|>"', 'PARAMETER stop "<|call|>"']  # not <|end|>: ends analysis


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system", "multi-turn"])
def test_harmony_prompt_as_the_jinja_template_writes_it(messages):
    import jinja2

    want = jinja2.Template(HARMONY_JINJA).render(messages=messages, add_generation_prompt=True)
    got = go_render(TEMPLATES["harmony"][0], ollama_values(messages))
    assert got == want
    assert got.endswith("<|start|>user<|message|>" + messages[-1]["content"] + "<|end|><|start|>assistant")
