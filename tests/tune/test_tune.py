"""slimedge tune: learned block scales of a quantized GGUF (slimedge.tune).

Checked (the torch modules alone: test_modules.py): on the shipped demo teacher's Q4_K_M, tuning lowers the
held-out KL divergence to the teacher, keeps the file's size, tensor table, header bytes and metadata; gguf-py reads the
tuned blocks as slimedge does; llama.cpp runs the tuned weights (as F32) with transformers' logits at F32
tolerance, and the tuned file itself within llama.cpp's activation-quantization error (as the untuned file);
an interrupted run resumes to the same bytes; the usual bad inputs (tiny test models) are one line each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.distill.distill_kit import corpus_text
from tests.factory import cached_hf_model

from slimedge.convert import convert
from slimedge.errors import SlimedgeError
from slimedge.gguf_info import read_info
from slimedge.quant import dequantize
from slimedge.quant.blockfields import SUPPORTED
from slimedge.quant.mixes import QuantSpec


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune")
    hf = cached_hf_model(arch="llama", kquant=True)
    (d / "train.txt").write_text(corpus_text(40_000))
    q = convert(hf, d / "q4km.gguf", QuantSpec("Q4_K_M"), overwrite=True) and d / "q4km.gguf"
    return hf, d, q


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The shipped demo teacher (a trained 4-layer Llama) as Q4_K_M, with 150k characters of its training text."""
    from slimedge.demo import corpus
    from slimedge.demo.pipeline import shipped_teacher

    d = tmp_path_factory.mktemp("tune-demo")
    (d / "train.txt").write_text(corpus.train_text()[:150_000])
    hf = shipped_teacher()
    convert(hf, d / "q4km.gguf", QuantSpec("Q4_K_M"), overwrite=True)
    return hf, d, d / "q4km.gguf"


def _tune(hf, d, q, out, **kw):
    from slimedge.tune import TuneConfig, tune

    cfg = TuneConfig(gguf=str(q), teacher=str(hf), data=str(d / "train.txt"), output=str(out), seq_len=64,
                     batch_size=4, threads=1, overwrite=True, **kw)
    return tune(cfg)


@pytest.mark.slow
def test_tune_lowers_kl_keeps_the_file_and_runs_in_llama_cpp(demo):
    import gguf
    from tests.convert.convert_util import llama_logits, rel_err, sample_tokens

    from slimedge.distill.runtime import load_teacher_meta
    from slimedge.tune import TuneConfig
    from slimedge.tune.model import build_model, tensor_entries

    hf, d, q = demo
    out = d / "tuned.gguf"
    r = _tune(hf, d, q, out, steps=30, eval_blocks=16)
    assert r.kl_after < 0.97 * r.kl_before, r
    assert r.tuned.get("Q4_K") and r.tuned.get("Q6_K")
    a, b = read_info(q), read_info(out)
    assert b.file_size == a.file_size and b.data_offset == a.data_offset
    assert [(t.name, t.shape, t.type, t.offset) for t in a.tensors] == [(t.name, t.shape, t.type, t.offset)
                                                                         for t in b.tensors]
    assert a.metadata == b.metadata and a.metadata_types == b.metadata_types
    assert open(q, "rb").read(a.data_offset) == open(out, "rb").read(b.data_offset)     # same header bytes
    ra, rb = gguf.GGUFReader(q), gguf.GGUFReader(out)
    changed = 0
    for ta, tb in zip(ra.tensors, rb.tensors):
        changed += not np.array_equal(ta.data, tb.data)
        if tb.tensor_type.name in SUPPORTED:  # gguf-py's own dequantization reads our fields as we do
            mine = dequantize(np.asarray(tb.data), tb.tensor_type.name, int(tb.shape[0]))
            assert np.array_equal(gguf.quants.dequantize(np.asarray(tb.data), tb.tensor_type).reshape(mine.shape),
                                  mine), tb.name
    assert changed == sum(r.tuned.values())

    def torch_logits(path, tokens):
        cfg, tok = load_teacher_meta(str(hf))
        info = read_info(path)
        entries, scfg = tensor_entries(info, cfg, str(hf), str(path))
        with open(path, "rb") as f:
            m, _ = build_model(TuneConfig(str(path), str(hf), "", ""), info, entries, scfg, f)
        with torch.no_grad():
            return m.eval()(torch.tensor([tokens])).logits[0].numpy()

    tokens = sample_tokens(read_info(q).tensor("token_embd.weight").shape[0], bos=0)
    # the tuned weights as F32 (same metadata): llama.cpp then multiplies exactly those values in float
    f32 = _dequantized_copy(out, d / "tuned-f32.gguf")
    assert rel_err(llama_logits(f32, tokens), torch_logits(out, tokens)) < 2e-5
    # the tuned file itself: llama.cpp multiplies k-quant blocks with Q8_K-quantized activations, an error the
    # untuned file shows alike, far below what tuning changed
    err_tuned = rel_err(llama_logits(out, tokens), torch_logits(out, tokens))
    err_plain = rel_err(llama_logits(q, tokens), torch_logits(q, tokens))
    moved = rel_err(torch_logits(out, tokens), torch_logits(q, tokens))
    assert err_tuned < 0.5 and err_tuned < 1.5 * err_plain + 0.02 and moved > 3 * err_tuned, (err_tuned, err_plain,
                                                                                             moved)


def _dequantized_copy(src: Path, dst: Path) -> Path:
    """``src`` with every tensor dequantized to F32 (slimedge.quant.dequantize), metadata unchanged."""
    import gguf

    from slimedge.source.gguf_src import field_value
    from slimedge.writer import GGUFStreamWriter

    info, reader = read_info(src), gguf.GGUFReader(src)
    mm = np.memmap(src, dtype=np.uint8, mode="r")
    with GGUFStreamWriter(dst, arch="", overwrite=True) as w:
        for key, f in reader.fields.items():
            if not key.startswith("GGUF."):
                w.add_kv(key, *field_value(f))
        for t in info.tensors:
            w.add_tensor_info(t.name, t.shape, gguf.GGMLQuantizationType.F32)
        w.begin_data()
        for t in info.tensors:
            raw = np.asarray(mm[t.offset:t.offset + t.n_bytes]).reshape(-1, t.n_bytes // int(np.prod(t.shape[:-1])))
            w.write_tensor(t.name, dequantize(raw, t.type, t.shape[-1]).reshape(-1))
    return dst


def test_zero_steps_write_the_same_bytes(model, tmp_path):
    hf, d, q = model
    _tune(hf, d, q, tmp_path / "same.gguf", steps=0, max_blocks=4, eval_blocks=1)
    assert (tmp_path / "same.gguf").read_bytes() == q.read_bytes()


def test_bad_inputs(model, tmp_path):
    hf, d, q = model
    other_vocab = cached_hf_model(arch="llama", kquant=True, tokenizer="bpe:qwen2")
    with pytest.raises(SlimedgeError, match="vocabulary .* is not that of teacher"):
        _tune(other_vocab, d, q, tmp_path / "x.gguf", steps=0)
    deeper = cached_hf_model(arch="llama", kquant=True, num_hidden_layers=3)
    g3 = convert(deeper, tmp_path / "deep.gguf", QuantSpec("Q4_K_M")) and tmp_path / "deep.gguf"
    with pytest.raises(SlimedgeError, match="3 layers, more than teacher"):
        _tune(hf, d, g3, tmp_path / "x.gguf", steps=0)
    wide = cached_hf_model(arch="llama", kquant=True, intermediate_size=768)
    gw = convert(wide, tmp_path / "wide.gguf", QuantSpec("Q4_K_M")) and tmp_path / "wide.gguf"
    # its metadata says another feed-forward width than its tensors have: neither the teacher nor itself
    import gguf
    from tests.gguf_edit import edit_gguf

    lying = edit_gguf(gw, tmp_path / "lying.gguf",
                      set={"llama.feed_forward_length": (640, gguf.GGUFValueType.UINT32, None)})
    with pytest.raises(SlimedgeError, match=r"tensor blk\.0\.ffn_\w+\.weight .* does not match teacher .* nor the "
                                            r"widths its own metadata states"):
        _tune(hf, d, lying, tmp_path / "x.gguf", steps=0)
    f16 = convert(hf, tmp_path / "f16.gguf", QuantSpec("F16")) and tmp_path / "f16.gguf"
    with pytest.raises(SlimedgeError, match="no quantized tensor to tune"):
        _tune(hf, d, f16, tmp_path / "x.gguf", steps=0)
    iq = tmp_path / "iq.gguf"
    convert(hf, iq, QuantSpec("Q4_K_M", overrides=[("attn_v", "IQ3_S")]))
    with pytest.raises(SlimedgeError, match=r"blk\.0\.attn_v\.weight is IQ3_S, which slimedge tune cannot learn"):
        _tune(hf, d, iq, tmp_path / "x.gguf", steps=0)
    assert not (tmp_path / "x.gguf").exists()


def test_cli_tunes_and_reports_bad_input_in_one_line(model, tmp_path):
    from click.testing import CliRunner

    from slimedge.cli import main

    hf, d, q = model
    out = tmp_path / "t.gguf"
    r = CliRunner().invoke(main, ["tune", str(q), "--teacher", str(hf), "--data", str(d / "train.txt"), "-o", str(out),
                                 "--steps", "2", "--seq-len", "64", "--max-blocks", "4", "-t", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size == q.stat().st_size
    r = CliRunner().invoke(main, ["tune", str(q), "--teacher", str(hf), "--data", str(d / "train.txt"), "-o", str(out),
                                 "--steps", "1"])
    assert r.exit_code != 0 and "exists" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = CliRunner().invoke(main, ["tune", str(tmp_path / "missing.gguf"), "--teacher", str(hf), "--data",
                                 str(d / "train.txt"), "-o", str(tmp_path / "u.gguf")])
    assert r.exit_code != 0 and "missing.gguf" in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_interrupted_run_resumes_to_the_same_file(model, tmp_path):
    from slimedge.tune import TuneConfig
    from slimedge.tune.api import checkpoint_path
    from slimedge.progress import Progress

    hf, d, q = model
    kw = dict(steps=6, checkpoint_every=3, max_blocks=8, eval_blocks=1)
    _tune(hf, d, q, tmp_path / "whole.gguf", **kw)

    class Stop(Progress):
        def update(self, n, label="", **info):
            self.done = getattr(self, "done", 0) + n
            if self.done >= 5:
                raise KeyboardInterrupt

    from slimedge.tune import tune

    cfg = TuneConfig(gguf=str(q), teacher=str(hf), data=str(d / "train.txt"), output=str(tmp_path / "r.gguf"),
                     seq_len=64, batch_size=4, threads=1, **kw)
    with pytest.raises(KeyboardInterrupt):
        tune(cfg, Stop())
    assert Path(checkpoint_path(cfg)).is_file() and not (tmp_path / "r.gguf").exists()
    cfg.resume = True
    tune(cfg)
    assert (tmp_path / "r.gguf").read_bytes() == (tmp_path / "whole.gguf").read_bytes()
    assert not Path(checkpoint_path(cfg)).exists()
    cfg.steps, cfg.overwrite = 7, True
    with pytest.raises(SlimedgeError, match="no checkpoint"):
        tune(cfg)


@pytest.mark.slow
def test_a_student_of_another_width_tunes(model, tmp_path):
    # one layer, 2 query heads / 1 kv head of 128, feed-forward 768: the widths come from the GGUF's metadata and
    # Llama's q/k rows are un-permuted with the student's head count
    from slimedge.distill.runtime import load_teacher_meta
    from slimedge.tune import TuneConfig
    from slimedge.tune.model import build_model, tensor_entries

    hf, d, _ = model
    student = cached_hf_model(arch="llama", kquant=True, num_hidden_layers=1, num_attention_heads=2,
                              num_key_value_heads=1, intermediate_size=768, seed=3)
    cfg, _tok = load_teacher_meta(str(hf))
    f32 = convert(student, tmp_path / "s8.gguf", QuantSpec("Q8_0")) and tmp_path / "s8.gguf"
    info = read_info(f32)
    entries, scfg = tensor_entries(info, cfg, str(hf), str(f32))
    assert (scfg.num_hidden_layers, scfg.num_attention_heads, scfg.num_key_value_heads, scfg.intermediate_size) == \
        (1, 2, 1, 768)
    with open(f32, "rb") as f:
        m, _ = build_model(TuneConfig(str(f32), str(hf), "", ""), info, entries, scfg, f)
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32).eval()
    x = torch.tensor([[1, 5, 9, 2, 7, 3, 8, 4]])
    with torch.no_grad():  # the student's own logits up to Q8_0 rounding: every weight and row order read back
        a, b = m.eval()(x).logits, ref(x).logits
    assert float((a - b).norm() / b.norm()) < 0.05  # 0.022 here; the teacher-shaped model: 0.028
    q = convert(student, tmp_path / "s.gguf", QuantSpec("Q4_K_M")) and tmp_path / "s.gguf"
    r = _tune(hf, d, q, tmp_path / "t.gguf", steps=8, max_blocks=16, eval_blocks=2, lr=1e-2)
    assert r.kl_after < r.kl_before, r
    assert (tmp_path / "t.gguf").stat().st_size == q.stat().st_size


@pytest.mark.slow  # torchrun with two processes
def test_torchrun_two_processes_tune_as_one(model, tmp_path):
    # each process takes half of every step's blocks and the gradients are summed: the same run as one process
    # up to the order of float sums (fp16-rounded scales may then differ in a last bit here and there)
    import os
    import re
    import subprocess

    hf, d, q = model
    one = _tune(hf, d, q, tmp_path / "one.gguf", steps=4, max_blocks=8, eval_blocks=4, warm_steps=3)
    args = [str(q), "--teacher", str(hf), "--data", str(d / "train.txt"), "--steps", "4", "--seq-len", "64",
            "--batch-size", "4", "--max-blocks", "8", "--warm-steps", "3", "-o", str(tmp_path / "two.gguf")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "slimedge", "tune", *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stderr.count("wrote ") == 1, proc.stderr[-2000:]  # only process 0 writes and reports
    before, after = map(float, re.search(r"KL vs teacher ([\d.]+) -> ([\d.]+)", proc.stderr).groups())
    # printed with 5 decimals
    assert before == pytest.approx(one.kl_before, abs=6e-6) and after == pytest.approx(one.kl_after, rel=1e-3)
    a, b = (tmp_path / "one.gguf").read_bytes(), (tmp_path / "two.gguf").read_bytes()
    assert len(a) == len(b) and a != q.read_bytes()  # the steps changed the fields
    same = np.mean(np.frombuffer(a, np.uint8) == np.frombuffer(b, np.uint8))
    assert same > 0.999, same
    info = read_info(tmp_path / "one.gguf")
    for t in info.tensors:
        if t.type in SUPPORTED:
            wa, wb = (dequantize(np.frombuffer(x, np.uint8)[t.offset:t.offset + t.n_bytes].reshape(
                int(np.prod(t.shape[:-1])), -1), t.type, t.shape[-1]) for x in (a, b))
            np.testing.assert_allclose(wa, wb, rtol=2e-3, atol=1e-6, err_msg=t.name)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "slimedge", "tune", *args[:-2], "--batch-size", "1", "-o", str(tmp_path / "x.gguf")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode != 0 and "smaller than the 2 processes" in r.stderr and not (tmp_path / "x.gguf").exists()


@pytest.mark.slow  # torchrun with two processes
def test_torchrun_fsdp_teacher_tunes_as_one_process(model, tmp_path):
    # the teacher's weights sharded over two processes (FSDP2); 3 cache batches and 1 held-out batch, so one
    # process joins forwards it has no block for
    import os
    import re
    import subprocess

    hf, d, q = model
    one = _tune(hf, d, q, tmp_path / "one.gguf", steps=3, max_blocks=12, eval_blocks=4)
    args = [str(q), "--teacher", str(hf), "--data", str(d / "train.txt"), "--steps", "3", "--seq-len", "64",
            "--batch-size", "4", "--max-blocks", "12", "--fsdp-teacher", "-o", str(tmp_path / "two.gguf")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "slimedge", "tune", *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    before, after = map(float, re.search(r"KL vs teacher ([\d.]+) -> ([\d.]+)", proc.stderr).groups())
    assert before == pytest.approx(one.kl_before, abs=6e-6) and after == pytest.approx(one.kl_after, rel=1e-3)
    a, b = (tmp_path / "one.gguf").read_bytes(), (tmp_path / "two.gguf").read_bytes()
    assert len(a) == len(b) and a != q.read_bytes()
    assert np.mean(np.frombuffer(a, np.uint8) == np.frombuffer(b, np.uint8)) > 0.999


def test_bf16_steps_with_low_memory_layers(model, tmp_path):
    # bf16 autocast steps through the rebuilt-in-backward layers (float_mb=0): the same file layout, fields moved
    hf, d, q = model
    kw = dict(steps=3, max_blocks=8, eval_blocks=2, float_mb=0)
    r = _tune(hf, d, q, tmp_path / "b.gguf", precision="bf16", **kw)
    f = _tune(hf, d, q, tmp_path / "f.gguf", precision="fp32", **kw)
    assert np.isfinite(r.kl_after) and r.kl_before == f.kl_before and r.step_seconds > 0
    a, b = (tmp_path / "b.gguf").read_bytes(), (tmp_path / "f.gguf").read_bytes()
    assert len(a) == len(b) == q.stat().st_size and a != q.read_bytes() and a != b
