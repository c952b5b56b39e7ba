"""``slimedge convert SRC -o OUT.gguf --type T``: Hugging Face folder (or float GGUF) to GGUF.

Parses options into a :class:`~slimedge.quant.mixes.QuantSpec` and calls
:func:`slimedge.convert.convert` (or :func:`~slimedge.convert.plan` for ``--dry-run``).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import SlimedgeError
from .options import make_progress, overwrite_option, quiet_option, threads_option, tune_options


def _mtp_head(src: Path, out: Path | None, spec, imatrix, dry_run: bool, overwrite: bool, quiet: bool,
              threads: int | None) -> None:
    from ..arch._qwen_mtp import mtp_head_hook
    from ..convert import convert, plan

    if dry_run:
        click.echo(plan(src, spec, imatrix=imatrix, source_hook=mtp_head_hook).table())
        return
    if out is None:
        raise SlimedgeError("missing -o/--output OUT.gguf (or pass --dry-run)")
    result = convert(src, out, spec, threads=threads, overwrite=overwrite, progress=make_progress(quiet),
                     imatrix=imatrix, source_hook=mtp_head_hook)
    if not quiet:
        click.echo(f"wrote {result.out}: the multi-token-prediction head, {len(result.plan.tensors)} tensors, "
                   f"{result.file_bytes / 1e6:.1f} MB; use it as llama-server -m MODEL.gguf -md {result.out.name} "
                   f"--spec-type draft-mtp")


def _parse_override(value: str) -> tuple[str, str]:
    from ..quant.mixes import parse_override  # llama-quantize's --tensor-type: first '=', pattern lower-cased

    return parse_override(value)


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=None,
              help="Output .gguf file (required unless --dry-run).")
@click.option("--type", "ftype", default="F16", show_default=True, metavar="TYPE",
              help="A llama.cpp mix (Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1; "
                   "Q4_K means Q4_K_M as in llama-quantize), a float type (F32, F16, BF16), or 'auto': the "
                   "quality-driven mix, each tensor's type chosen by measured sensitivity (--calib) under a "
                   "size budget (--target-bpw / --target-size).")
@click.option("--tensor-type", "overrides", multiple=True, metavar="REGEX=TYPE",
              help="Type for GGUF tensor names matching REGEX (repeatable; first match wins).")
@click.option("--output-tensor-type", default=None, metavar="TYPE", help="Type of output.weight.")
@click.option("--token-embedding-type", default=None, metavar="TYPE", help="Type of token_embd.weight.")
@click.option("--pure", is_flag=True, help="The mix's base type for every quantized tensor (no mix rules).")
@click.option("--imatrix", "imatrix", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Importance matrix (slimedge imatrix / llama-imatrix, GGUF or .dat) for the quantizers.")
@click.option("--dry-run", is_flag=True, help="List each tensor's type and size and the totals; write nothing.")
@click.option("--target-bpw", type=float, default=None, metavar="B",
              help="With --type auto: size budget in bits per weight (all tensors), e.g. 4.5.")
@click.option("--target-size", default=None, metavar="SIZE",
              help="With --type auto: budget of tensor data, e.g. 3.5MB, 700MiB, or a mix name (Q4_K_M: its size).")
@click.option("--calib", "calib", type=click.Path(path_type=Path), default=None, metavar="FILE|DIR",
              help="With --type auto: calibration text the per-tensor sensitivities are measured on.")
@click.option("--sensitivity", "sens_cache", type=click.Path(path_type=Path), default=None, metavar="FILE.json",
              help="With --type auto: reuse (or write) the measured sensitivities here.")
@click.option("--sensitivity-method", "sens_method", type=click.Choice(["proxy", "layerwise", "exhaustive"]),
              default="proxy", show_default=True,
              help="With --type auto: how sensitivities are measured (proxy: fast, calibrated per tensor; "
                   "layerwise: exact partial forwards; exhaustive: one whole forward per tensor and type).")
@click.option("--refine", "refine", type=click.IntRange(min=0), default=None, metavar="N",
              help="With --type auto and the proxy: re-measure exactly (partial forwards) the types the allocation "
                   "picks and their neighbours by size, then allocate again; at most N measurements (default: 4 per "
                   "calibration run of the proxy; 0: none).")
@click.option("--device", "sens_device", default="auto", show_default=True, metavar="auto|cpu|cuda",
              help="With --type auto: torch device for the sensitivities (auto: cuda when there is one).")
@click.option("--base", "lora_base", type=click.Path(path_type=Path), default=None, metavar="BASE",
              help="SRC is a PEFT LoRA adapter folder trained on BASE (a Hugging Face folder): write llama.cpp's "
                   "LoRA GGUF (--type f32, f16, bf16 or q8_0), or with --merge the base with the adapter folded in.")
@click.option("--merge", is_flag=True, help="With --base: fold the adapter into the base and convert that "
                                              "(any --type), in the same streaming pass.")
@click.option("--mmproj-type", "mmproj_type", default="f16", show_default=True, metavar="f16|bf16|q8_0|f32",
              help="For a vision-language model: the type of its vision projector, written beside OUT as llama.cpp's "
                   "mmproj (mmproj-NAME-TYPE.gguf; norms, biases and a few tensors keep llama.cpp's own types).")
@click.option("--no-mmproj", is_flag=True, help="For a vision-language model: write the text model only.")
@click.option("--mtp", "mtp", is_flag=True,
              help="Write only the model's multi-token-prediction head (Qwen3.5, Qwen3-Next), as llama.cpp's "
                   "converter does with --mtp: the draft for llama-server -md OUT --spec-type draft-mtp.")
@tune_options
@threads_option
@overwrite_option
@quiet_option
def cli(src: Path, out: Path | None, ftype: str, overrides: tuple[str, ...], output_tensor_type: str | None,
        token_embedding_type: str | None, pure: bool, imatrix: Path | None, dry_run: bool,
        target_bpw: float | None, target_size: str | None, calib: Path | None, sens_cache: Path | None,
        sens_method: str, refine: int | None, sens_device: str, lora_base: Path | None, merge: bool, mmproj_type: str,
        no_mmproj: bool, mtp: bool,
        tune, threads: int | None, overwrite: bool, quiet: bool) -> None:
    """Convert a Hugging Face model (or an F32/F16/BF16 GGUF) to GGUF, quantized.

    SRC is a model folder (config.json, *.safetensors, tokenizer files), an F32/F16/BF16 GGUF file to
    requantize, or a Hub model id (org/name) already in the local Hugging Face cache (resolved offline;
    slimedge never downloads). A vision-language model (Gemma 3, SmolVLM, ...) gives two files: the text
    model OUT and its vision projector mmproj-NAME-F16.gguf beside it (see docs/vision.md).

    \b
    Examples:
      slimedge convert ./TinyLlama-1.1B -o tinyllama-f16.gguf --type f16
      slimedge convert ./TinyLlama-1.1B -o tinyllama-q4km.gguf --type Q4_K_M
      slimedge convert tinyllama-f16.gguf -o tinyllama-q8.gguf --type q8_0 --tensor-type 'ffn_down=f16'
      slimedge convert ./TinyLlama-1.1B --type Q4_K_M --dry-run
      slimedge convert ./gemma-3-4b-it -o gemma3-q4km.gguf --type Q4_K_M    # + mmproj-gemma-3-4b-it-F16.gguf
      slimedge convert Qwen/Qwen3-1.7B -o qwen3-q4km.gguf --type Q4_K_M   # from the HF cache
      slimedge convert ./TinyLlama-1.1B --type auto --target-size Q4_K_M --calib wiki.txt -o tl-auto.gguf
      slimedge convert ./TinyLlama-1.1B --type auto --target-bpw 4.5 --calib wiki.txt --refine 0 -o tl-fast.gguf
      slimedge convert ./TinyLlama-1.1B -o tinyllama-q4km.gguf --type Q4_K_M --imatrix imatrix.gguf
      slimedge convert ./TinyLlama-1.1B -o tl-q4km-tuned.gguf --type Q4_K_M --imatrix imatrix.gguf --tune wiki.txt
      slimedge convert ./student -o student-q4km.gguf --type Q4_K_M --tune wiki.txt --tune-teacher ./teacher
      slimedge convert ./Qwen3.5-9B -o mtp-qwen3.5-9b-q8_0.gguf --type q8_0 --mtp   # the MTP head as a draft
      slimedge convert ./my-lora --base ./TinyLlama-1.1B -o my-lora-f16.gguf --type f16
      slimedge convert ./my-lora --base ./TinyLlama-1.1B --merge -o tl-my-lora-q4km.gguf --type Q4_K_M
    """
    from ..convert import convert, plan
    from ..quant.mixes import QuantSpec

    spec = QuantSpec(ftype=ftype, overrides=[_parse_override(v) for v in overrides],
                     output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type, pure=pure)
    if mtp:  # the MTP head alone: llama.cpp's draft for --spec-type draft-mtp
        if lora_base is not None or merge or tune is not None or ftype.strip().lower() == "auto":
            raise SlimedgeError("--mtp writes the multi-token-prediction head alone: it takes --type (not auto), "
                                "--imatrix and the --tensor-type options, not --base/--merge/--tune")
        return _mtp_head(src, out, spec, imatrix, dry_run, overwrite, quiet, threads)
    if lora_base is not None or merge:  # SRC is a LoRA adapter
        model_only = bool(target_bpw or target_size or calib or tune is not None or ftype.strip().lower() == "auto")
        return _adapter(src, lora_base, merge, out, spec, imatrix, overwrite, quiet, threads, model_only,
                        bool(overrides or output_tensor_type or token_embedding_type or pure or imatrix))
    if ftype.strip().lower() == "auto":  # quality-driven mix: measured sensitivities, knapsack under the budget
        from ..calib.sensitivity import auto_allocation, read_text

        if calib is None:
            raise SlimedgeError("--type auto needs --calib FILE|DIR: the text sensitivities are measured on")
        alloc = auto_allocation(src, read_text(calib), target_bpw=target_bpw, target_size=target_size,
                                imatrix=imatrix, cache=sens_cache, threads=threads, method=sens_method,
                                device=sens_device, refine=refine, progress=make_progress(quiet))
        spec = alloc.spec(output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type)
        if dry_run or not quiet:
            click.echo(alloc.table(), err=not dry_run)
    elif target_bpw is not None or target_size is not None:
        raise SlimedgeError("--target-bpw / --target-size need --type auto")
    mmproj = None if no_mmproj else mmproj_type
    if dry_run:
        click.echo(plan(src, spec, imatrix=imatrix).table())
        if mmproj:
            from ..mmproj import plan_mmproj

            projector = plan_mmproj(src, mmproj)
            if projector is not None:
                click.echo(projector.table())
        return
    if out is None:
        raise SlimedgeError("missing -o/--output OUT.gguf (or pass --dry-run)")
    if tune is not None:
        from ..mmproj import mmproj_beside
        from ..tune.convert import convert_and_tune

        write_mmproj = mmproj and mmproj_beside(src, out, mmproj, overwrite=overwrite, threads=threads)
        result, tuned = convert_and_tune(src, out, spec, tune, threads=threads, overwrite=overwrite,
                                         progress=make_progress(quiet), imatrix=imatrix)
        result.mmproj = write_mmproj() if write_mmproj else None
        if not quiet:
            click.echo(f"tuned against {tune.teacher or src} ({tune.steps} steps): held-out KL "
                       f"{tuned.kl_before:.5f} -> {tuned.kl_after:.5f}", err=True)
    else:
        result = convert(src, out, spec, threads=threads, overwrite=overwrite, progress=make_progress(quiet),
                         imatrix=imatrix, mmproj=mmproj)
    if not quiet:
        p = result.plan
        click.echo(f"wrote {result.out}: {len(p.tensors)} tensors, {result.file_bytes / 1e6:.1f} MB, "
                   f"{p.bits_per_weight:.2f} bits per weight, {result.seconds:.1f} s "
                   f"({result.mb_per_s:.0f} MB/s)", err=True)
        if result.mmproj is not None:
            m = result.mmproj
            click.echo(f"wrote {m.out}: {m.projector_type} vision projector, {len(m.tensors)} tensors, "
                       f"{m.file_bytes / 1e6:.1f} MB", err=True)


def _adapter(src: Path, base: Path | None, merge: bool, out: Path | None, spec, imatrix: Path | None,
             overwrite: bool, quiet: bool, threads: int | None, model_only: bool, mix_options: bool) -> None:
    """``convert ADAPTER --base BASE [--merge]``: a LoRA adapter alone, or merged into its base."""
    if base is None:
        raise SlimedgeError("--merge needs --base BASE: the Hugging Face folder the adapter was trained on")
    if model_only:
        raise SlimedgeError("--type auto, --target-*, --calib and --tune do not apply to a LoRA adapter; merge "
                            "and convert it first, then tune or measure the merged GGUF")
    if out is None:
        raise SlimedgeError("missing -o/--output OUT.gguf")
    if merge:
        from ..adapter import convert_merged

        result = convert_merged(src, base, out, spec, threads=threads, overwrite=overwrite,
                                progress=make_progress(quiet), imatrix=imatrix)
        if not quiet:
            click.echo(f"wrote {result.out}: {base.name} with {src.name} merged, {result.file_bytes / 1e6:.1f} MB, "
                       f"{result.plan.bits_per_weight:.2f} bits per weight", err=True)
        return
    if mix_options:
        raise SlimedgeError("a LoRA adapter takes only --type (f32, f16, bf16, q8_0); mix options and --imatrix "
                            "apply to models (add --merge to quantize the base with the adapter merged)")
    from ..adapter import convert_adapter

    result = convert_adapter(src, base, out, spec.ftype, overwrite=overwrite)
    if not quiet:
        click.echo(f"wrote {result.out}: LoRA adapter for {result.arch} ({len(result.pairs)} pairs, alpha "
                   f"{result.alpha:g}), {result.file_bytes / 1e6:.2f} MB", err=True)
