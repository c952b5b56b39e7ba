"""Ollama Modelfile: chat templates recognised by family and written as Go templates; unknown ones fall back."""

from __future__ import annotations

import pytest
from tests import tokfactory
from tests.bundle.go_template import go_render, ollama_values

from slimedge.bundle.modelfile import TEMPLATES, chat_family, render_modelfile

RT = {"n_ctx": 2048, "n_batch": 256, "n_threads": 4, "n_gpu_layers": -1}

JINJA = {
    "chatml": tokfactory._CHATML_TEMPLATE,
    "llama3": tokfactory._LLAMA3_TEMPLATE,
    "phi3": tokfactory._PHI3_TEMPLATE,
    "zephyr": "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}",
    "llama2": "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
              "message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}",
    "gemma": "{% for message in messages %}<start_of_turn>{{ message['role'] }}\n{{ message['content'] }}"
             "<end_of_turn>\n{% endfor %}<start_of_turn>model\n",
}


@pytest.mark.parametrize("family", sorted(JINJA))
def test_known_families(family):
    assert chat_family(JINJA[family]) == family
    text = render_modelfile("model.gguf", RT, JINJA[family], "Tiny Model")
    tmpl, stops = TEMPLATES[family]
    assert "FROM ./model.gguf" in text
    assert "PARAMETER num_ctx 2048" in text and "PARAMETER num_thread 4" in text and "PARAMETER num_gpu 999" in text
    assert f'TEMPLATE """{tmpl}"""' in text
    for s in stops:
        assert f'PARAMETER stop "{s}"' in text
    assert "{% " not in text  # no Jinja leaks into the Go template
    assert text.count("{{") == text.count("}}")


def test_rendered_go_template_matches_jinja_output():
    """The ChatML Go template, rendered as Ollama's Go would, gives the same prompt as the Jinja template."""
    import jinja2

    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "?"}]
    want = jinja2.Template(JINJA["chatml"]).render(messages=msgs, add_generation_prompt=True)
    got = go_render(TEMPLATES["chatml"][0], ollama_values(msgs))
    assert got == want


def test_unknown_and_missing_template_fall_back_clearly():
    for tmpl in (tokfactory._GPT2_TEMPLATE, None):
        assert chat_family(tmpl) is None
        text = render_modelfile("model.gguf", dict(RT, n_threads=0, n_gpu_layers=0), tmpl, "m")
        assert 'TEMPLATE """' not in text
        assert "no TEMPLATE is written" in text
        assert "num_thread" not in text and "PARAMETER num_gpu 0" in text
