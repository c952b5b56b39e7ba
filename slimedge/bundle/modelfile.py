"""Ollama ``Modelfile`` for a bundle: FROM, PARAMETERs from the runtime profile, TEMPLATE when known.

Ollama templates are Go templates, models ship Jinja ones; instead of interpreting Jinja, the
common chat formats are recognised by their markers (ChatML ``<|im_start|>``, Llama-3
``<|start_header_id|>``, Phi-3 ``<|user|>…<|end|>``, Zephyr ``<|user|>…</s>``, Llama-2/Mistral
``[INST]``, Gemma ``<start_of_turn>``) and written as the equivalent Go template with their stop
strings. Anything else gets no TEMPLATE and a comment saying so (Ollama then uses the model's
raw prompt; add a TEMPLATE by hand).
"""

from __future__ import annotations

# family -> (Go template, stop strings)
TEMPLATES: dict[str, tuple[str, list[str]]] = {
    "chatml": (
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n",
        ["<|im_start|>", "<|im_end|>"]),
    "llama3": (
        "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "phi3": (
        "{{- if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
        "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
        ["<|end|>", "<|user|>", "<|assistant|>"]),
    "zephyr": (
        "{{- if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}"
        "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}<|assistant|>\n",
        ["</s>", "<|user|>"]),
    "llama2": (
        "{{- range $i, $m := .Messages }}{{- if eq $m.Role \"user\" }}[INST] "
        "{{ if and (eq $i 0) $.System }}<<SYS>>\n{{ $.System }}\n<</SYS>>\n\n{{ end }}{{ $m.Content }} [/INST]"
        "{{- else if eq $m.Role \"assistant\" }} {{ $m.Content }}</s>{{- end }}{{- end }}",
        ["[INST]", "[/INST]", "</s>"]),
    "gemma": (
        "{{- range .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}{{ .Role }}{{ end }}\n"
        "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
        ["<start_of_turn>", "<end_of_turn>"]),
}


def chat_family(template: str | None) -> str | None:
    """The known chat format a Jinja template implements, or None."""
    if not template:
        return None
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "<start_of_turn>" in template:
        return "gemma"
    if "[INST]" in template:
        return "llama2"
    if "<|user|>" in template or "'<|' + message['role'] + '|>" in template:
        return "phi3" if "<|end|>" in template else ("zephyr" if "eos_token" in template or "</s>" in template
                                                      else None)
    return None


def render_modelfile(model_file: str, runtime: dict, chat_template: str | None, name: str) -> str:
    """Text of the Modelfile for ``model_file`` (relative path) with the profile's ``runtime``."""
    fam = chat_family(chat_template)
    lines = [f"# Ollama Modelfile for {name} (slimedge bundle)",
             f"#   ollama create {name.lower().replace(' ', '-')} -f Modelfile && "
             f"ollama run {name.lower().replace(' ', '-')}",
             f"FROM ./{model_file}", "",
             f"PARAMETER num_ctx {runtime['n_ctx']}",
             f"PARAMETER num_batch {runtime['n_batch']}"]
    if runtime.get("n_threads"):
        lines.append(f"PARAMETER num_thread {runtime['n_threads']}")
    ngl = runtime.get("n_gpu_layers", 0)
    lines.append(f"PARAMETER num_gpu {999 if ngl < 0 else ngl}")
    if fam is None:
        lines += ["", "# The model's chat template is " + ("not one slimedge recognises (ChatML, Llama-3, Phi-3, "
                  "Zephyr, Llama-2/Mistral, Gemma)" if chat_template else "missing") + ": no TEMPLATE is written,",
                  "# so Ollama sends prompts as they are. Add a TEMPLATE block by hand for chat."]
    else:
        tmpl, stops = TEMPLATES[fam]
        lines += [f"PARAMETER stop \"{s}\"" for s in stops]
        lines += ["", f"# chat format: {fam} (translated from the model's Jinja chat template)",
                  f'TEMPLATE """{tmpl}"""']
    return "\n".join(lines) + "\n"
