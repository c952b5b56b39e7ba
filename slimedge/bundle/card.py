"""The bundle's ``README.md``: what the model is, how to run it (launcher, llama.cpp, Ollama), and the
numbers — memory estimate always, measured speed/quality once ``slimedge bench BUNDLE`` recorded some, and
each device's measurements (``bench/``, via ``slimedge report``) beside the estimate. A release folder's
card (:func:`render_release_card`): Hugging Face front matter, the files with size, bits per weight and
measured quality, and how to run them with llama.cpp, Ollama and LM Studio.
"""

from __future__ import annotations

import json

MiB = 1 << 20


def _mb(b: float | None, unit: str = " MiB") -> str:
    return "—" if b is None else f"{b / MiB:,.0f}{unit}"


def _ts(avg: float | None, sd: float | None) -> str:
    """tokens/s as mean ± standard deviation."""
    return "—" if avg is None else f"{avg:.1f} ± {sd or 0:.1f}"


def _num(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def bench_table(records: list[dict]) -> str:
    head = ("| when | threads | load s | pp t/s | tg t/s | peak RSS | PPL | KLD | top-1 |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for r in records:
        pp, tg = _ts(r.get("pp_avg_ts"), r.get("pp_stddev_ts")), _ts(r.get("avg_ts"), r.get("stddev_ts"))
        top1 = "—" if r.get("top1_agreement") is None else f"{100 * r['top1_agreement']:.1f}%"
        rows.append(f"| {r.get('test_time', '?')} ({r.get('cpu_info', '?')}) | {r.get('n_threads', '?')} | "
                    f"{_num(r.get('load_s'), '.2f')} | {pp} | {tg} | {_mb(r.get('peak_rss_bytes'))} | "
                    f"{_num(r.get('perplexity'), '.3f')} | {_num(r.get('kld_mean'), '.4f')} | {top1} |")
    return head + "\n" + "\n".join(rows)


def device_name(r: dict) -> str:
    gpu = f", {r['gpu_info']}" if r.get("gpu_info") else ""
    return f"{r.get('hostname') or '?'} ({r.get('cpu_info') or '?'}{gpu}; {r.get('backends') or '?'})"


def device_table(rs: list[dict]) -> str:
    """Markdown: what each device measured (rows of :func:`slimedge.bundle.report.rows`) beside the estimate."""
    head = ("| device | when | flash attn | load s | pp t/s | tg t/s | peak RSS MiB | estimate MiB | RSS / est. "
            "| GPU MiB | est. VRAM MiB |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rs:
        mib = [_mb(r.get(k) or None, "") for k in ("peak_rss_bytes", "est_ram_bytes", "gpu_mem_bytes", "est_vram_bytes")]
        lines.append(f"| {device_name(r)} | {r.get('test_time') or '?'} | {r.get('flash_attn') or '?'} | "
                     f"{_num(r.get('load_s'), '.2f')} | {_ts(r.get('pp_avg_ts'), r.get('pp_stddev_ts'))} | "
                     f"{_ts(r.get('avg_ts'), r.get('stddev_ts'))} | {mib[0]} | {mib[1]} | "
                     f"{_num(r['rss_vs_estimate'], '.2f')} | {mib[2]} | {mib[3]} |")
    return "\n".join(lines)


def _fa_name(fa: bool | None) -> str:
    return "auto" if fa is None else ("on" if fa else "off")


def render_card(m: dict) -> str:
    q, rt, t, est = m["quantization"], m["runtime"], m["target"], m["memory_estimate"]
    name, model = m["name"], m["model"]
    ngl = rt["n_gpu_layers"]
    thr = f" -t {rt['n_threads']}" if rt.get("n_threads") else ""
    fa = {True: " -fa on", False: " -fa off"}.get(rt.get("flash_attn"), "")  # llama.cpp's default is auto
    kv = (f" -ctk {rt['cache_type_k']} -ctv {rt['cache_type_v']}"
          if (rt["cache_type_k"], rt["cache_type_v"]) != ("f16", "f16") else "")
    llama_args = f"-m {model} -c {rt['n_ctx']} -b {rt['n_batch']} -ub {rt['n_ubatch']} -ngl {ngl}{thr}{fa}{kv}"
    types = ", ".join(f"{k} ×{v['count']}" for k, v in q["tensor_types"].items())
    tag = name.lower().replace(" ", "-")
    lines = [
        f"# {name} — {q['type']} for `{t['name']}`",
        "",
        f"Built by slimedge {m['slimedge_version']} on {m['created']} from `{m['source']['path']}`.",
        f"Target: **{t['name']}** — {t['description']}.",
        "",
        "| | |", "|---|---|",
        f"| model file | `{model}` ({q['model_size'] / MiB:,.1f} MiB of tensors, {q['bpw']:.2f} bits per weight) |",
        f"| parameters | {q['n_params']:,} |",
        f"| quantization | {q['type']} (chosen by {q['chosen_by']}); tensors: {types} |",
        *([f"| tuned | block scales tuned against `{q['tuned']['teacher']}` ({q['tuned']['steps']} steps on "
           f"`{q['tuned']['data']}`): held-out KL divergence {q['tuned']['kl_before']:.5f} -> "
           f"{q['tuned']['kl_after']:.5f} |"] if q.get("tuned") else []),
        f"| runtime | context {rt['n_ctx']}, batch {rt['n_batch']}/{rt['n_ubatch']}, GPU layers {ngl}, "
        f"KV cache {rt['cache_type_k']}/{rt['cache_type_v']}, flash attention {_fa_name(rt.get('flash_attn'))} |",
        f"| memory estimate | RAM {_mb(est['required_ram'])} (weights {_mb(est['weights_ram'])}, KV cache "
        f"{_mb(est['kv_ram'])}, compute {_mb(est['compute_ram'])}, runtime {_mb(est['host_ram'])}); peak RSS "
        f"{_mb(est['total_ram'])} with the pages of load-time repacked weights"
        + (f"; VRAM {_mb(est['total_vram'])}" if est["total_vram"] else "") + " |",
        f"| chat format | {m.get('chat_format') or 'unknown (no template translated for Ollama)'} |",
        *_draft_rows(m),
        *_mmproj_rows(m),
        "",
        "## Run it",
        "",
        *(_embedding_run(m, llama_args, tag) if m.get("embedding") else
          _vision_run(m, llama_args, tag) if m.get("mmproj") else _text_run(llama_args, tag)),
        *_draft_notes(m),
        "Check the files before use: `slimedge verify .` (sha256 of every file, then a test load).",
        "",
        "## Measured",
        "",
    ]
    if m.get("bench"):
        lines += [bench_table(m["bench"]), "",
                  "pp: prompt processing of a 512-token prompt, tg: generation of 128 tokens, tokens/s mean ± stddev "
                  "over fresh processes; PPL/KLD/top-1 as in `slimedge bench --text --ref`."]
    elif not m.get("devices"):
        lines += ["Not measured yet: run `python run --bench --json` on the device (then `slimedge report <this "
                  "folder>`), or `slimedge bench <this folder>` (add `--text FILE --ref UNQUANTIZED` for quality); "
                  "the numbers are then recorded here."]
    if m.get("devices"):
        lines += ["", "### On the devices", "",
                  "Measured with `python run --bench --json` on each device (files in `bench/`), beside this "
                  "bundle's memory estimate (`slimedge report` renders this table):", "", device_table(m["devices"])]
    return "\n".join(lines) + "\n"


def _text_run(llama_args: str, tag: str) -> list[str]:
    return [
        "With Python (`pip install llama-cpp-python`), from this folder:", "", "```sh",
        "python run \"Once upon a time\" --max-tokens 64   # one-shot",
        "python run --chat                                 # chat",
        "python run --bench                                # measure speed on this device",
        "```", "", "With llama.cpp's own tools:", "", "```sh",
        f"llama-cli {llama_args} -p \"Once upon a time\" -n 64",
        f"llama-server {llama_args} --port 8080",
        "```", "", "With Ollama:", "", "```sh", f"ollama create {tag} -f Modelfile", f"ollama run {tag}", "```", ""]


def _embedding_run(m: dict, llama_args: str, tag: str) -> list[str]:
    """An embedding bundle: vectors, not text (launcher, llama.cpp's --embedding, Ollama's embed API)."""
    e = m["embedding"]
    pooling = f" --pooling {e['pooling']}" if e.get("pooling") not in (None, "none") else ""
    norm = "normalized to length 1" if e.get("normalize", True) else "not normalized"
    return [
        f"An embedding model ({e.get('pooling')} pooling, vectors {norm}): it turns text into vectors and does not "
        "chat. With Python (`pip install llama-cpp-python`), from this folder:", "", "```sh",
        "python run --embed \"some text\"       # prints the vector as JSON",
        "python run --serve                      # OpenAI-compatible /v1/embeddings at http://127.0.0.1:8080/v1",
        "```", "", "With llama.cpp's own tools:", "", "```sh",
        f"llama-embedding {llama_args}{pooling} -p \"some text\"",
        f"llama-server {llama_args} --embedding{pooling} --port 8080   # /v1/embeddings",
        "```", "", "With Ollama (its embed API; `ollama run` does not apply to an embedding model):", "", "```sh",
        f"ollama create {tag} -f Modelfile",
        f"curl http://localhost:11434/api/embed -d '{{\"model\": \"{tag}\", \"input\": \"some text\"}}'",
        "```", "",
        "LM Studio: copy `" + m["model"] + "` into `~/.lmstudio/models/PUBLISHER/MODEL/`; it lists the file as an "
        "embedding model for its `/v1/embeddings` server.", ""]


def _vision_run(m: dict, llama_args: str, tag: str) -> list[str]:
    """A bundle with a vision projector: how each client loads the pair."""
    mm = m["mmproj"]["file"]
    return [
        f"The model reads images through its vision projector `{mm}` (both files are needed). With Python "
        "(`pip install llama-cpp-python`), from this folder:", "", "```sh",
        "python run --image photo.jpg \"Describe this image.\"   # one image question",
        "python run --chat                 # chat; a line `/image PATH` attaches an image to your next message",
        "python run --serve                # OpenAI API; image_url parts: data URLs (--image-dir DIR: local files)",
        "```", "", "With llama.cpp's own tools (the pair: `-m` model, `--mmproj` projector):", "", "```sh",
        f"llama-mtmd-cli {llama_args} --mmproj {mm} --image photo.jpg -p \"Describe this image.\"",
        f"llama-server {llama_args} --mmproj {mm} --port 8080",
        "```", "",
        f"With Ollama: the Modelfile names both files (`FROM ./{m['model']}` then `FROM ./{mm}`); images go in the "
        "prompt as a file path or in the API's `images`. Some Ollama versions ignore an imported projector for "
        "families their own engine runs (Gemma 3, for one): use llama-server or `python run --serve` for images "
        "then.", "", "```sh", f"ollama create {tag} -f Modelfile", f"ollama run {tag} \"Describe ./photo.jpg\"",
        "```", "",
        f"LM Studio: copy `{m['model']}` and `{mm}` into the same folder `~/.lmstudio/models/PUBLISHER/MODEL/`; it "
        "pairs the model with the projector beside it (a file whose name starts with `mmproj`).", ""]


def _mmproj_rows(m: dict) -> list[str]:
    e = m.get("mmproj")
    if not e:
        return []
    pm = m["memory_estimate"].get("mmproj", {})
    return [f"| vision projector | `{e['file']}` ({e.get('projector_type')}, {e.get('file_type')}), "
            f"{e.get('image_size')} px images, ~{pm.get('tokens_per_image', '?')} context tokens each "
            f"({pm.get('images_per_context', '?')} fit the context); its weights {_mb(pm.get('weights', 0))} and "
            f"encoder scratch {_mb(pm.get('compute', 0))} are in the estimate above |"]


def _draft_rows(m: dict) -> list[str]:
    d = m.get("draft")
    if not d:
        return []
    dm = m["memory_estimate"].get("draft", {})
    return [f"| draft model | `{d['file']}` ({d.get('type')}), up to {d.get('draft_max')} tokens drafted per step; "
            f"its weights {_mb(dm.get('weights_ram', 0))} and KV cache {_mb(dm.get('kv_ram', 0))} are in the "
            f"estimate above |"]


def _draft_notes(m: dict) -> list[str]:
    """How the bundle's speculative draft is used by each runtime."""
    d = m.get("draft")
    if not d:
        return []
    from .drafts import server_command

    return [
        f"Speculative decoding: `{d['file']}` (same vocabulary) proposes tokens that the model checks in one batch; "
        "the output is the model's own (token for token at temperature 0), generation is faster when the draft is "
        "often right. `python run` (one-shot, `--chat`, `--serve`) and `slimedge serve` use it; `--no-draft` "
        "turns it off. With llama.cpp's server:",
        "",
        "```sh",
        f"{server_command(m)} --port 8080",
        "```",
        "",
        "Ollama cannot use the draft: it has no draft-model setting (a Modelfile has one `FROM` model), so "
        f"`ollama run` decodes with `{m['model']}` alone, at the normal speed and with the same output.",
        "",
    ]


def human_size(n: int) -> str:
    """Bytes as the Hub shows them (decimal units)."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.2f} MB"


def _yaml_str(s: str) -> str:
    return json.dumps(str(s), ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def release_front_matter(m: dict) -> str:
    """Hugging Face model-card metadata: base_model, base_model_relation, license, tags, quantized_by."""
    lic = m.get("license") or "other"
    lines = ["---", f"base_model: {_yaml_str(m['base_model'])}", "base_model_relation: quantized",
             f"license: {_yaml_str(lic)}"]
    if lic == "other":
        lines.append(f"license_name: {_yaml_str(m.get('license_name') or 'see-base-model')}")
    if m.get("license_link"):
        lines.append(f"license_link: {_yaml_str(m['license_link'])}")
    tags = ["gguf", "llama.cpp", "quantized", "slimedge"] + ([m["architecture"]] if m.get("architecture") else [])
    lines += ["tags:"] + [f"- {_yaml_str(t)}" for t in tags]
    task = "image-text-to-text" if m.get("mmproj") else "text-generation"  # the Hub's task for a VLM's pair
    lines += [f"quantized_by: {_yaml_str(m['quantized_by'])}", f"pipeline_tag: {task}", "library_name: gguf",
              "---"]
    return "\n".join(lines)


def release_table(m: dict) -> str:
    measured = m.get("quality") is not None
    head = "| File | Type | Size | Bits/weight |" + (" PPL | KLD | top-1 |" if measured else "") + \
        f" RAM estimate ({m['target']['name']}) |"
    sep = "|---|---|---:|---:|" + ("---:|---:|---:|" if measured else "") + "---:|"
    rows = [head, sep]
    for e in m["models"]:
        q = ""
        if measured:
            top1 = "—" if e.get("top1_agreement") is None else f"{100 * e['top1_agreement']:.1f}%"
            q = f" {_num(e.get('perplexity'), '.4f')} | {_num(e.get('kld_mean'), '.5f')} | {top1} |"
        fit = "" if e.get("fits_target", True) else " (over budget)"
        rows.append(f"| [{e['file']}](./{e['file']}) | {e['type']} | {human_size(e['size'])} | {e['bpw']:.2f} |{q} "
                    f"{_mb(e['memory_estimate']['total_ram'])}{fit} |")
    return "\n".join(rows)


def _release_vision(m: dict, args: str, repo: str, qtype: str) -> list[str]:
    """A release with a vision projector: the file, and how each client picks the pair."""
    mm = m.get("mmproj")
    if not mm:
        return []
    first = m["modelfile_model"]
    return [
        "", f"**Images**: `{mm['file']}` ({mm['projector_type']} projector, {mm['type']}, {human_size(mm['size'])}) "
        f"is the vision projector of every file above: give it beside whichever type you pick. Images of "
        f"{mm['image_size']} px take ~{mm['tokens_per_image']} context tokens each; the RAM estimates include its "
        f"weights and its encoder's scratch for one image.", "",
        "```sh",
        f"llama-mtmd-cli -m {first} --mmproj {mm['file']} {args} --image photo.jpg -p \"Describe this image.\"",
        f"llama-server -m {first} --mmproj {mm['file']} {args} --port 8080",
        f"llama-server -hf {repo}:{qtype} {args}   # -hf fetches the repo's mmproj with the model (--no-mmproj: not)",
        "```", "",
        f"Ollama: the `Modelfile` names both (`FROM ./{first}` then `FROM ./{mm['file']}`). LM Studio pairs a model "
        "with the `mmproj*.gguf` in its folder (`--lmstudio` puts it there)."]


def render_release_card(m: dict) -> str:
    """README.md of a release folder (:mod:`slimedge.bundle.release`): front matter, files, how to run each."""
    name, by, rt = m["name"], m["quantized_by"], m["runtime"]
    repo = f"{by}/{name}-GGUF"
    first = m["modelfile_model"]
    example = next(e for e in m["models"] if e["file"] == first)
    fa = {True: " -fa on", False: " -fa off"}.get(rt.get("flash_attn"), "")
    args = f"-c {rt['n_ctx']} -ngl {rt['n_gpu_layers']}{fa}"
    q = m.get("quality")
    lines = [
        release_front_matter(m), "",
        f"# {name} — GGUF",
        "",
        f"GGUF quantizations of [{m['base_model']}](https://huggingface.co/{m['base_model']}) for llama.cpp, "
        f"made by slimedge {m['slimedge_version']} on {m['created']} (llama.cpp's mixes, tensor types chosen as "
        f"`llama-quantize` chooses them). License: {m.get('license') or 'as the base model (not stated in the source)'}.",
        "",
        "## Files",
        "",
        release_table(m),
        "",
        f"Bits/weight: tensor bytes × 8 / parameters. RAM estimate: weights + KV cache + compute buffers for the "
        f"`{m['target']['name']}` profile (context {rt['n_ctx']}, {m['target']['description']}).",
    ]
    lines += _release_vision(m, args, repo, example["type"])
    if q:
        lines += ["", f"PPL: perplexity on `{q['text']}` (context {q['n_ctx']}, llama.cpp's method, flash attention "
                      f"{q['flash_attn']}); KLD: mean KL divergence and top-1 agreement against the unquantized "
                      f"{q['reference']} model on the same tokens (its perplexity: {_num(q['ref_perplexity'], '.4f')}); "
                      "measured through llama.cpp (llama-cpp-python)."]
    lines += [
        "",
        "## Run it",
        "",
        "Pick a file from the table; the examples use "
        f"`{first}` — put another file's name (or its type, `{example['type']}`) in its place.",
        "",
        "**llama.cpp** (`llama-cli`, `llama-server`), from this folder or straight from the Hub:",
        "",
        "```sh",
        f"llama-cli -m {first} {args} -cnv",
        f"llama-server -m {first} {args} --port 8080",
        f"llama-server -hf {repo}:{example['type']} {args}",
        "```",
        "",
        "**Ollama**: from the Hub, or from this folder with the `Modelfile` (its `FROM` line names the file; "
        "edit it for another type):",
        "",
        "```sh",
        f"ollama run hf.co/{repo}:{example['type']}",
        f"ollama create {name.lower()} -f Modelfile && ollama run {name.lower()}",
        "```",
        "",
        "**LM Studio** finds models only in its models folder (`~/.lmstudio/models` by default), laid out as "
        "`publisher/model/file.gguf`; search the Hub for it in LM Studio, or lay the files out with "
        f"`slimedge build ... --lmstudio ~/.lmstudio/models`, which writes `{by}/{name}-GGUF/<file>.gguf`.",
        "",
        "Check the files: `slimedge verify .` (sha256 of every file in `manifest.json`, then a test load of each GGUF).",
    ]
    return "\n".join(lines) + "\n"
