"""Ollama ``Modelfile`` for a bundle: FROM, PARAMETERs from the runtime profile, TEMPLATE when known.

Ollama templates are Go templates, models ship Jinja ones; instead of interpreting Jinja, the
common chat formats are recognised by their markers (ChatML ``<|im_start|>``, with ``<think>``
reasoning as Qwen3/SmolLM3 write it, Granite ``<|start_of_role|>``, OLMo 2 ``<|user|>``, DeepSeek-R1
``<｜User｜>``, Llama-3
``<|start_header_id|>``, Phi-3 ``<|user|>…<|end|>``, Zephyr ``<|user|>…</s>``, Llama-2/Mistral
``[INST]``, Mistral v7 ``[SYSTEM_PROMPT]`` (Ministral 3), EXAONE 4 ``[|endofturn|]``, Gemma ``<start_of_turn>``, Gemma 4
``<|turn>``, gpt-oss's harmony ``<|start|>…<|channel|>``) and written as the equivalent Go template with their stop
strings. Anything else gets no TEMPLATE and a comment saying so (Ollama then uses the model's
raw prompt; add a TEMPLATE by hand).
"""

from __future__ import annotations

import re

# family -> (Go template, stop strings)
TEMPLATES: dict[str, tuple[str, list[str]]] = {
    "chatml": (
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{- range .Messages }}{{- if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}"
        "<|im_start|>assistant\n",
        ["<|im_start|>", "<|im_end|>"]),
    # ChatML with reasoning (Qwen3, SmolLM3): as Ollama's qwen3 template, the latest assistant turn's thinking
    # goes inside <think>…</think>, and with thinking turned off the prompt closes an empty <think> block
    "chatml-think": (
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}"
        "{{- if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n"
        "{{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n"
        "{{ if and $.IsThinkSet (and $last .Thinking) -}}<think>\n{{ .Thinking }}\n</think>\n{{ end }}"
        "{{ .Content }}{{ if not $last }}<|im_end|>\n{{ end }}{{- end }}"
        "{{- if and (ne .Role \"assistant\") $last }}<|im_start|>assistant\n"
        "{{ if and $.IsThinkSet (not $.Think) -}}<think>\n\n</think>\n\n{{ end -}}{{ end }}{{- end }}",
        ["<|im_start|>", "<|im_end|>"]),
    # Granite 3.x roles
    "granite": (
        "{{- if .System }}<|start_of_role|>system<|end_of_role|>{{ .System }}<|end_of_text|>\n{{ end }}"
        "{{- range .Messages }}{{- if ne .Role \"system\" }}<|start_of_role|>{{ .Role }}<|end_of_role|>{{ .Content }}<|end_of_text|>\n{{ end }}{{ end }}"
        "<|start_of_role|>assistant<|end_of_role|>",
        ["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"]),
    # OLMo 2: "<|user|>\n…\n", assistant turns end with its eos <|endoftext|>
    "olmo2": (
        "{{- if .System }}<|system|>\n{{ .System }}\n{{ end }}"
        "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}"
        "{{- if eq .Role \"user\" }}<|user|>\n{{ .Content }}\n"
        "{{ else if eq .Role \"assistant\" }}<|assistant|>\n{{ .Content }}{{ if not $last }}<|endoftext|>\n{{ end }}"
        "{{- end }}{{- if and (ne .Role \"assistant\") $last }}<|assistant|>\n{{ end }}{{- end }}",
        ["<|user|>", "<|system|>", "<|endoftext|>"]),
    # DeepSeek-R1 and its Qwen/Llama distills
    "deepseek-r1": (
        "{{- if .System }}{{ .System }}{{ end }}"
        "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}"
        "{{- if eq .Role \"user\" }}<\uff5cUser\uff5c>{{ .Content }}"
        "{{- else if eq .Role \"assistant\" }}<\uff5cAssistant\uff5c>{{ .Content }}"
        "{{- if not $last }}<\uff5cend\u2581of\u2581sentence\uff5c>{{- end }}{{- end }}"
        "{{- if and $last (ne .Role \"assistant\") }}<\uff5cAssistant\uff5c>{{- end }}{{- end }}",
        ["<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>",
         "<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>"]),
    "llama3": (
        "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
        "{{- range .Messages }}{{- if ne .Role \"system\" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "phi3": (
        "{{- if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
        "{{- range .Messages }}{{- if ne .Role \"system\" }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}{{ end }}<|assistant|>\n",
        ["<|end|>", "<|user|>", "<|assistant|>"]),
    "zephyr": (
        "{{- if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}"
        "{{- range .Messages }}{{- if ne .Role \"system\" }}<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}{{ end }}<|assistant|>\n",
        ["</s>", "<|user|>"]),
    "llama2": (
        "{{- $sys := .System }}{{- range $i, $m := .Messages }}{{- if eq $m.Role \"user\" }}[INST] "
        "{{ if $sys }}<<SYS>>\n{{ $sys }}\n<</SYS>>\n\n{{ $sys = \"\" }}{{ end }}{{ $m.Content }} [/INST]"
        "{{- else if eq $m.Role \"assistant\" }} {{ $m.Content }}</s>{{- end }}{{- end }}",
        ["[INST]", "[/INST]", "</s>"]),
    # Gemma has no system role: as its Jinja template, the system prompt opens the first user turn
    # ("<start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n"); assistant turns are "model" turns
    "gemma": (
        "{{- $sys := .System }}{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}"
        "{{- if eq .Role \"user\" }}<start_of_turn>user\n{{ if $sys }}{{ $sys }}\n\n{{ $sys = \"\" }}{{ end }}"
        "{{ .Content }}<end_of_turn>\n"
        "{{ else if eq .Role \"assistant\" }}<start_of_turn>model\n{{ .Content }}{{ if not $last }}<end_of_turn>\n{{ end }}"
        "{{- end }}{{- if and $last (ne .Role \"assistant\") }}<start_of_turn>model\n{{ end }}{{- end }}",
        ["<start_of_turn>", "<end_of_turn>"]),
    # Gemma 4: "<|turn>role\n…<turn|>\n" turns, a real system turn (with <|think|> first when thinking is on),
    # assistant turns are "model" turns; with thinking off the prompt closes an empty thought channel
    "gemma4": (
        "{{- $think := and $.IsThinkSet $.Think }}"
        "{{- if .System }}<|turn>system\n{{ if $think }}<|think|>\n{{ end }}{{ .System }}<turn|>\n"
        "{{ else if $think }}<|turn>system\n<|think|>\n<turn|>\n{{ end }}"
        "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}"
        "{{- if eq .Role \"user\" }}<|turn>user\n{{ .Content }}<turn|>\n"
        "{{ else if eq .Role \"assistant\" }}<|turn>model\n{{ .Content }}{{ if not $last }}<turn|>\n{{ end }}"
        "{{- end }}{{- if and $last (ne .Role \"assistant\") }}<|turn>model\n"
        "{{ if not $think }}<|channel>thought\n<channel|>{{ end }}{{ end }}{{- end }}",
        ["<turn|>", "<|turn>"]),
    # gpt-oss's harmony format: a system header (identity, reasoning level, channels), the system prompt as the
    # developer's instructions, earlier answers as final-channel messages (their analysis dropped, as harmony
    # does) and the prompt ends "<|start|>assistant" for the model to open its channel; generation ends at
    # <|return|> (or <|call|> for a tool call), not at <|end|>, which closes the analysis before the answer
    "harmony": (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\n\nReasoning: medium\n\n# Valid channels: analysis, commentary, final. "
        "Channel must be included for every message.<|end|>"
        "{{- if .System }}<|start|>developer<|message|># Instructions\n\n{{ .System }}<|end|>{{ end }}"
        "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}"
        "{{- if eq .Role \"user\" }}<|start|>user<|message|>{{ .Content }}<|end|>"
        "{{- else if eq .Role \"assistant\" }}<|start|>assistant<|channel|>final<|message|>{{ .Content }}"
        "{{- if not $last }}<|end|>{{ end }}{{- end }}"
        "{{- if and $last (ne .Role \"assistant\") }}<|start|>assistant{{ end }}{{- end }}",
        ["<|return|>", "<|call|>"]),
    # Mistral v7 with the tekken tokenizer (Ministral 3, Mistral Small 3.x; llama.cpp's "mistral-v7-tekken"):
    # no spaces around the markers, the system prompt in [SYSTEM_PROMPT], every assistant turn ends with </s>
    "mistral-v7": (
        "{{- if .System }}[SYSTEM_PROMPT]{{ .System }}[/SYSTEM_PROMPT]{{ end }}"
        "{{- range .Messages }}{{- if eq .Role \"user\" }}[INST]{{ .Content }}[/INST]"
        "{{- else if eq .Role \"assistant\" }}{{ .Content }}</s>{{- end }}{{- end }}",
        ["[INST]", "</s>"]),
    # EXAONE 4 (as llama.cpp's "exaone4"): user turns end with a newline, system and assistant turns with
    # [|endofturn|] and a newline
    "exaone4": (
        "{{- if .System }}[|system|]{{ .System }}[|endofturn|]\n{{ end }}"
        "{{- range .Messages }}{{- if eq .Role \"user\" }}[|user|]{{ .Content }}\n"
        "{{ else if eq .Role \"assistant\" }}[|assistant|]{{ .Content }}[|endofturn|]\n{{ end }}{{- end }}[|assistant|]",
        ["[|endofturn|]", "[|user|]"]),
}


# OLMo 2's user turn: "<|user|>" newline, the content, a newline (Zephyr's ends with eos instead)
_OLMO2_USER = re.compile(r"'<\|user\|>(?:\n|\\n)'\s*\+\s*message\['content'\]\s*\+\s*'(?:\n|\\n)'")


def chat_family(template: str | None) -> str | None:
    """The known chat format a Jinja template implements, or None."""
    if not template:
        return None
    if "<|channel|>" in template and "<|start|>" in template:
        return "harmony"
    if "<|im_start|>" in template:
        return "chatml-think" if "<think>" in template else "chatml"
    if "<|start_of_role|>" in template:
        return "granite"
    if "<\uff5cUser\uff5c>" in template:
        return "deepseek-r1"
    if _OLMO2_USER.search(template):
        return "olmo2"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "<start_of_turn>" in template:
        return "gemma"
    if "<|turn>" in template and "<turn|>" in template:
        return "gemma4"
    if "[SYSTEM_PROMPT]" in template:
        return "mistral-v7"
    if "[|assistant|]" in template and "[|endofturn|]" in template:
        return "exaone4"
    if "[INST]" in template:
        return "llama2"
    if "<|user|>" in template or "'<|' + message['role'] + '|>" in template:
        return "phi3" if "<|end|>" in template else ("zephyr" if "eos_token" in template or "</s>" in template
                                                      else None)
    return None


def render_modelfile(model_file: str, runtime: dict, chat_template: str | None, name: str,
                     adapters: list[tuple[str, float]] = (), mmproj: str | None = None, embedding: bool = False) -> str:
    """Text of the Modelfile for ``model_file`` (relative path) with the profile's ``runtime``; ``adapters``:
    (file, scale) of LoRA adapters, one ``ADAPTER`` line each (Ollama applies them at scale 1); ``mmproj``: the
    vision projector, a second ``FROM`` (how Ollama imports a model with its projector); ``embedding``: an
    embedding model (no chat template; how to ask Ollama for vectors)."""
    fam = None if embedding else chat_family(chat_template)
    tag = name.lower().replace(' ', '-')
    lines = [f"# Ollama Modelfile for {name} (slimedge bundle)",
             f"#   ollama create {tag} -f Modelfile && " + (
                 f"curl http://localhost:11434/api/embed -d '{{\"model\": \"{tag}\", \"input\": \"some text\"}}'"
                 if embedding else f"ollama run {tag}"),
             f"FROM ./{model_file}"]
    if mmproj:
        lines += [f"FROM ./{mmproj}",
                  "# the vision projector: Ollama attaches a second FROM of a projector GGUF to the model (images via",
                  "# `ollama run` with an image path in the prompt, or the API's \"images\"); for families its own",
                  "# engine runs (e.g. Gemma 3) some Ollama versions ignore an imported projector: then use",
                  "# llama-server --mmproj or `./run --serve` for images"]
    for file, scale in adapters:
        if scale != 1.0:
            lines.append(f"# {file} was bundled for scale {scale:g}; Ollama applies an adapter at scale 1")
        lines.append(f"ADAPTER ./{file}")
    lines += ["",
             f"PARAMETER num_ctx {runtime['n_ctx']}",
             f"PARAMETER num_batch {runtime['n_batch']}"]
    if runtime.get("n_threads"):
        lines.append(f"PARAMETER num_thread {runtime['n_threads']}")
    ngl = runtime.get("n_gpu_layers", 0)
    lines.append(f"PARAMETER num_gpu {999 if ngl < 0 else ngl}")
    if embedding:
        lines += ["", "# An embedding model: no TEMPLATE. Ollama's embed API (/api/embed, ollama.embed() in its client",
                  "# libraries) returns its vectors; it cannot chat."]
    elif fam is None:
        lines += ["", "# The model's chat template is " + ("not one slimedge recognises (ChatML, ChatML with "
                  "thinking, Llama-3, Phi-3, Zephyr, Llama-2/Mistral, Gemma, Gemma 4, Granite, OLMo 2, DeepSeek-R1, harmony, Mistral v7, EXAONE 4)" if chat_template else "missing") + ": no TEMPLATE is written,",
                  "# so Ollama sends prompts as they are. Add a TEMPLATE block by hand for chat."]
    else:
        tmpl, stops = TEMPLATES[fam]
        lines += [f"PARAMETER stop \"{s}\"" for s in stops]
        lines += ["", f"# chat format: {fam} (translated from the model's Jinja chat template)",
                  f'TEMPLATE """{tmpl}"""']
    return "\n".join(lines) + "\n"
