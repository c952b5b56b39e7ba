"""The bundle's ``README.md``: what the model is, how to run it (launcher, llama.cpp, Ollama), and the
numbers — memory estimate always, measured speed/quality once ``slimedge bench BUNDLE`` recorded some, and
each device's measurements (``bench/``, via ``slimedge report``) beside the estimate.
"""

from __future__ import annotations

MiB = 1 << 20


def _mb(b: float | None) -> str:
    return "—" if b is None else f"{b / MiB:,.0f} MiB"


def _num(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def bench_table(records: list[dict]) -> str:
    head = ("| when | threads | load s | pp t/s | tg t/s | peak RSS | PPL | KLD | top-1 |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for r in records:
        pp = "—" if r.get("pp_avg_ts") is None else f"{r['pp_avg_ts']:.1f} ± {r.get('pp_stddev_ts') or 0:.1f}"
        tg = "—" if r.get("avg_ts") is None else f"{r['avg_ts']:.1f} ± {r.get('stddev_ts') or 0:.1f}"
        top1 = "—" if r.get("top1_agreement") is None else f"{100 * r['top1_agreement']:.1f}%"
        rows.append(f"| {r.get('test_time', '?')} ({r.get('cpu_info', '?')}) | {r.get('n_threads', '?')} | "
                    f"{_num(r.get('load_s'), '.2f')} | {pp} | {tg} | {_mb(r.get('peak_rss_bytes'))} | "
                    f"{_num(r.get('perplexity'), '.3f')} | {_num(r.get('kld_mean'), '.4f')} | {top1} |")
    return head + "\n" + "\n".join(rows)


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
        f"| runtime | context {rt['n_ctx']}, batch {rt['n_batch']}/{rt['n_ubatch']}, GPU layers {ngl}, "
        f"KV cache {rt['cache_type_k']}/{rt['cache_type_v']}, flash attention {_fa_name(rt.get('flash_attn'))} |",
        f"| memory estimate | RAM {_mb(est['required_ram'])} (weights {_mb(est['weights_ram'])}, KV cache "
        f"{_mb(est['kv_ram'])}, compute {_mb(est['compute_ram'])}, runtime {_mb(est['host_ram'])}); peak RSS "
        f"{_mb(est['total_ram'])} with the pages of load-time repacked weights"
        + (f"; VRAM {_mb(est['total_vram'])}" if est["total_vram"] else "") + " |",
        f"| chat format | {m.get('chat_format') or 'unknown (no template translated for Ollama)'} |",
        "",
        "## Run it",
        "",
        "With Python (`pip install llama-cpp-python`), from this folder:",
        "",
        "```sh",
        "python run \"Once upon a time\" --max-tokens 64   # one-shot",
        "python run --chat                                 # chat",
        "python run --bench                                # measure speed on this device",
        "```",
        "",
        "With llama.cpp's own tools:",
        "",
        "```sh",
        f"llama-cli {llama_args} -p \"Once upon a time\" -n 64",
        f"llama-server {llama_args} --port 8080",
        "```",
        "",
        "With Ollama:",
        "",
        "```sh",
        f"ollama create {tag} -f Modelfile",
        f"ollama run {tag}",
        "```",
        "",
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
        from .report import table

        lines += ["", "### On the devices", "",
                  "Measured with `python run --bench --json` on each device (files in `bench/`), beside this "
                  "bundle's memory estimate (`slimedge report` renders this table):", "", table(m["devices"])]
    return "\n".join(lines) + "\n"
