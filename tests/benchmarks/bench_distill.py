"""Benchmark of `slimedge distill` (not a test; run by hand).

Part 1 — quality. tokfactory's fixed corpus, lines shuffled. A small llama teacher (4 layers x 128) is
trained here for a few minutes on the first 85% of the text; the student data is the first 30% plus
the last 15% (whose final 10% of blocks is the held-out set, never seen by the teacher). The same
student shape (2 layers), same steps, same data order is distilled four ways: KD (forward KL) vs
cross-entropy only (--alpha 1), each from teacher-init and from random init. Reported: held-out
perplexity, KL(teacher‖student) and top-1 agreement, before → after.

Part 2 — speed and memory against TRL's GKDTrainer (lmbda=0, beta=0: off-policy forward KL, the
same objective) on the same teacher, student, batch and sequence length, each in a fresh process
on one thread. The teacher here has a 32k vocabulary (the tokenizer's 1000 tokens, embedding
padded) because output-layer memory is what chunking saves. Reported: training tokens/s over
steps 2..N; peak resident memory of a training step (high-water mark reset when training starts,
above the memory held then) and of the whole process (above its size after imports); ratios are
slimedge / TRL, measured in the same run.

Part 3 — on-policy (``--part onpolicy``): the speed part's teacher and student, lambda 0.5 and JSD
beta 0.5 on both sides (slimedge ``--on-policy 0.5 --loss jsd``; TRL ``lmbda=0.5, beta=0.5``), prompts
of ``--prompt`` tokens and ``--seq - --prompt`` sampled tokens at temperature 1. Reported as in part 2,
plus the mean seconds of on-policy and of off-policy steps (which steps sample differs between the two
RNGs) and the tokens/s they give at exactly half on-policy. TRL is needed only here and in part 2
(``pip install trl accelerate datasets --no-deps`` plus small dependencies, e.g. into a ``--target``
folder on PYTHONPATH).

    python tests/benchmarks/bench_distill.py            # all parts (~20 min on 2 busy cores)
    python tests/benchmarks/bench_distill.py --part onpolicy --seq 128 --prompt 64 --steps 16
    python tests/benchmarks/bench_distill.py --part speed --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root, for the tests package


def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status ("VmRSS": resident now, "VmHWM": its high-water mark) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _TrainWindow:
    """Peak resident memory while training only: reset the high-water mark when training starts."""

    def begin(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.rss0 = _status_mb("VmRSS")

    def peak(self) -> float:
        return _status_mb("VmHWM") - self.rss0


def make_teacher(work: Path, name: str, train_steps: int, **kw) -> Path:
    from tests.distill.distill_kit import train_teacher
    from tests.factory import make_hf_model

    dst = work / name
    if (dst / "config.json").exists():
        return dst
    src = make_hf_model(work / f"{name}-init", arch="llama", seed=1, **kw)
    if train_steps == 0:
        return src
    from tests.distill import distill_kit

    distill_kit.SEQ = 128
    text = (work / "corpus.txt").read_text()
    # the teacher never sees the held-out part (the last 10% of the blocks = the end of the text)
    return train_teacher(src, dst, text[: int(len(text) * 0.85)], steps=train_steps)


# ---------------------------------------------------------------------------------------------
def part_quality(work: Path, steps: int, teacher_steps: int) -> list[dict]:
    import torch

    from slimedge.distill import DistillConfig, distill

    torch.set_num_threads(1)
    teacher = make_teacher(work, f"teacher-q{teacher_steps}", teacher_steps, num_hidden_layers=4,
                           hidden_size=128, intermediate_size=256, max_position_embeddings=512)
    # the student sees less text than the teacher did (as usual in distillation): the first 30% of the
    # teacher's text plus the unseen tail, whose last 10% of blocks are held out
    text = (work / "corpus.txt").read_text()
    data = work / "distill.txt"
    data.write_text(text[: int(len(text) * 0.30)] + text[int(len(text) * 0.85):])
    rows = []
    for name, alpha, init in (("KD, teacher-init", 0.0, "auto"), ("CE only, teacher-init", 1.0, "auto"),
                              ("KD, random init", 0.0, "random"), ("CE only, random init", 1.0, "random")):
        cfg = DistillConfig(teacher=str(teacher), data=str(data), output=str(work / "q-out"),
                            overwrite=True, layers=2, seq_len=128, batch_size=8, steps=steps, lr=2e-3,
                            alpha=alpha, init=init, seed=0, max_eval_blocks=32)
        t0 = time.monotonic()
        r = distill(cfg).report
        rows.append({"run": name, "ppl": (r["student_perplexity_start"], r["student_perplexity"]),
                     "kl": (r["kl_start"], r["kl"]), "agree": (r["top1_agreement_start"], r["top1_agreement"]),
                     "teacher_ppl": r["teacher_perplexity"], "s": time.monotonic() - t0})
        print(f"  {name}: done in {rows[-1]['s']:.0f} s", file=sys.stderr)
    return rows


# ---------------------------------------------------------------------------------------------
def child_slimedge(a) -> dict:
    import torch

    from slimedge.distill import DistillConfig, distill
    from slimedge.progress import Progress

    torch.set_num_threads(1)
    base_rss = _status_mb("VmRSS")
    stamps: list[float] = []

    win = _TrainWindow()

    class Stamps(Progress):
        def start(self, total, unit="", desc=""):
            if desc == "distill":
                win.begin()

        def update(self, n, label="", **info):
            if label.startswith("loss"):
                stamps.append(time.monotonic())

    on = dict(on_policy=a.lmbda, loss="jsd", beta=0.5, prompt_len=a.prompt, gen_len=a.seq - a.prompt,
              gen_temperature=1.0, top_p=1.0, top_k=0) if a.lmbda else dict(loss="fkl")
    cfg = DistillConfig(teacher=a.teacher, data=a.data, output=a.out, overwrite=True, layers=a.layers,
                        seq_len=a.seq, batch_size=a.batch, steps=a.steps, lr=1e-4, warmup=0, max_eval_blocks=1,
                        alpha=0.0, temperature=1.0, seed=0, chunk_size=a.chunk, **on)
    r = distill(cfg, Stamps()).report
    tok_s = (len(stamps) - 1) * a.batch * a.seq / (stamps[-1] - stamps[0])
    out = {"tok_s": tok_s, "peak_mb": _peak_mb() - base_rss, "train_peak_mb": win.peak(),
           "final_loss": r["final_loss"]}
    if a.lmbda:
        from slimedge.distill.on_policy import on_policy_step

        out["step_s"] = _step_times(stamps, [on_policy_step(0, k, a.lmbda) for k in range(a.steps)])
    return out


def _step_times(stamps: list[float], on: list[bool]) -> dict:
    """Mean seconds of on-policy and of off-policy steps (steps 2..N: the first one warms up)."""
    d = {True: [], False: []}
    for k in range(1, len(stamps)):
        d[on[k]].append(stamps[k] - stamps[k - 1])
    return {"on": sum(d[True]) / max(len(d[True]), 1), "off": sum(d[False]) / max(len(d[False]), 1),
            "n_on": len(d[True]), "n_off": len(d[False])}


def child_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from slimedge.distill.tokens import prepare

    torch.set_num_threads(1)
    base_rss = _status_mb("VmRSS")
    tok = AutoTokenizer.from_pretrained(a.teacher)
    blocks = prepare(a.data, tok, a.seq).train
    ds = Dataset.from_dict({"input_ids": np.asarray(blocks).tolist()})

    def collate(examples):
        x = torch.tensor([e["input_ids"] for e in examples])
        if not a.lmbda:
            return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}
        labels = x.clone()
        labels[:, : a.prompt] = -100  # the prompt never counts (TRL's collator convention)
        prompts = x[:, : a.prompt]
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": labels, "prompts": prompts,
                "prompt_attention_mask": torch.ones_like(prompts)}

    stamps: list[float] = []
    on_flags: list[bool] = []
    sampled = [False]
    real_gen = GKDTrainer.generate_on_policy_outputs

    def counting_gen(*args, **kw):
        sampled[0] = True
        return real_gen(*args, **kw)

    GKDTrainer.generate_on_policy_outputs = staticmethod(counting_gen)

    win = _TrainWindow()

    class Stamps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            win.begin()

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.monotonic())
            on_flags.append(sampled[0])
            sampled[0] = False

    args = GKDConfig(output_dir=a.out, per_device_train_batch_size=a.batch, max_steps=a.steps, learning_rate=1e-4,
                     lr_scheduler_type="cosine", warmup_steps=0, lmbda=a.lmbda, beta=0.5 if a.lmbda else 0.0,
                     temperature=1.0, seq_kd=False, max_new_tokens=a.seq - a.prompt,
                     use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no", logging_steps=1,
                     max_length=a.seq, dataloader_num_workers=0, seed=0, disable_dropout=True,
                     gradient_checkpointing=False)
    student = AutoModelForCausalLM.from_pretrained(a.student, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(a.teacher, dtype=torch.float32)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds, data_collator=collate,
                         processing_class=tok, callbacks=[Stamps()])
    out = trainer.train()
    tok_s = (len(stamps) - 1) * a.batch * a.seq / (stamps[-1] - stamps[0])
    res = {"tok_s": tok_s, "peak_mb": _peak_mb() - base_rss, "train_peak_mb": win.peak(),
           "final_loss": out.training_loss}
    if a.lmbda:
        res["step_s"] = _step_times(stamps, on_flags)
    return res


def part_speed(work: Path, steps: int, batch: int, seq: int, chunk: int, lmbda: float = 0.0, prompt: int = 0) -> dict:
    import torch  # noqa: F401
    from transformers import AutoConfig

    from slimedge.distill import DistillConfig
    from slimedge.distill.student import build_student

    teacher = make_teacher(work, "teacher-v32k", 0, num_hidden_layers=4, hidden_size=256, intermediate_size=512,
                           pad_vocab=31000, max_position_embeddings=1024)
    student_dir = work / "student-v32k"
    if not (student_dir / "config.json").exists():  # the student TRL starts from = slimedge's own init
        from transformers import AutoTokenizer

        s, _ = build_student(AutoConfig.from_pretrained(teacher), DistillConfig(teacher=str(teacher), layers=2),
                             teacher_dir=str(teacher))
        s.save_pretrained(student_dir)
        AutoTokenizer.from_pretrained(teacher).save_pretrained(student_dir)
    res = {}
    for who in ("slimedge", "trl"):
        cmd = [sys.executable, __file__, "--child", who, "--teacher", str(teacher), "--student", str(student_dir),
               "--data", str(work / "corpus.txt"), "--out", str(work / f"out-{who}"), "--steps", str(steps),
               "--batch", str(batch), "--seq", str(seq), "--layers", "2", "--chunk", str(chunk),
               "--lmbda", str(lmbda), "--prompt", str(prompt)]
        env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", TRL_EXPERIMENTAL_SILENCE="1")
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            res[who] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
            print(p.stderr[-3000:], file=sys.stderr)
        else:
            res[who] = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"  {who}: {res[who]}", file=sys.stderr)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["all", "quality", "speed", "onpolicy"], default="all")
    ap.add_argument("--lmbda", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--prompt", type=int, default=64, help="on-policy part: prompt tokens (of --seq)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--work", default=None, help="folder for teachers/outputs (reused between runs)")
    ap.add_argument("--child", choices=["slimedge", "trl"], help=argparse.SUPPRESS)
    for k in ("teacher", "student", "data", "out"):
        ap.add_argument(f"--{k}", help=argparse.SUPPRESS)
    ap.add_argument("--teacher-steps", type=int, default=150, help="training steps of the quality teacher "
                    "(x16x128 tokens)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=64, help="slimedge --chunk-size")
    ap.add_argument("--layers", type=int, default=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.steps = a.steps or 6
        print(json.dumps(child_slimedge(a) if a.child == "slimedge" else child_trl(a)))
        return
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-distill-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "corpus.txt").exists():
        from tests import tokfactory

        import random

        lines = list(tokfactory.corpus_lines())  # shuffled: the held-out tail is like the rest
        random.Random(0).shuffle(lines)
        (work / "corpus.txt").write_text("\n".join(lines) + "\n")
    print(f"work folder: {work}", file=sys.stderr)
    if a.part in ("all", "quality"):
        rows = part_quality(work, a.steps or 150, a.teacher_steps)
        print(f"\nQuality: teacher 4 layers x 128, {a.teacher_steps} steps on 85% of the text (held-out ppl "
              f"{rows[0]['teacher_ppl']:.2f}); student 2 layers on 30% of it + the held-out tail, "
              f"{a.steps or 150} steps x 8 x 128 tokens, same data order")
        print("| run | held-out ppl | KL(teacher‖student) | top-1 agreement |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['run']} | {r['ppl'][0]:.2f} → {r['ppl'][1]:.2f} | {r['kl'][0]:.3f} → {r['kl'][1]:.3f} | "
                  f"{r['agree'][0]:.3f} → {r['agree'][1]:.3f} |")
    if a.part in ("all", "speed"):
        steps = a.steps or 6
        res = part_speed(work, steps, a.batch, a.seq, a.chunk)
        s, t = res["slimedge"], res["trl"]
        print(f"\nSpeed/memory: teacher 4x256 (vocab 32000), student 2 layers, batch {a.batch} x {a.seq} tokens, "
              f"{steps} steps, forward KL, 1 thread each")
        print("| trainer | tokens/s | peak memory of a training step | peak memory of the process |")
        print("|---|---|---|---|")
        for name, r in (("slimedge distill", s), ("TRL GKDTrainer (lmbda=0, beta=0)", t)):
            if "error" in r:
                print(f"| {name} | failed: {r['error']} | | |")
            else:
                print(f"| {name} | {r['tok_s']:.0f} | {r['train_peak_mb']:.0f} MB | {r['peak_mb']:.0f} MB |")
        if "error" not in s and "error" not in t:
            print(f"| ratio slimedge/TRL | {s['tok_s'] / t['tok_s']:.2f}x | "
                  f"{s['train_peak_mb'] / t['train_peak_mb']:.2f}x | {s['peak_mb'] / t['peak_mb']:.2f}x |")
    if a.part in ("all", "onpolicy"):
        steps = a.steps or 16
        res = part_speed(work, steps, a.batch, a.seq, a.chunk, lmbda=0.5, prompt=a.prompt)
        s, t = res["slimedge"], res["trl"]
        print(f"\nOn-policy (lambda 0.5, JSD beta 0.5): teacher 4x256 (vocab 32000), student 2 layers, batch "
              f"{a.batch} x ({a.prompt} prompt + {a.seq - a.prompt} sampled) tokens, {steps} steps, 1 thread each")
        print("| trainer | tokens/s (run) | s per on-policy step | s per off-policy step | tokens/s at lambda 0.5 "
              "| peak memory of a training step | peak memory of the process |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in (("slimedge distill --on-policy 0.5", s), ("TRL GKDTrainer (lmbda=0.5, beta=0.5)", t)):
            if "error" in r:
                print(f"| {name} | failed: {r['error']} | | | | | |")
                continue
            st = r["step_s"]
            r["tok_s_half"] = a.batch * a.seq / (0.5 * st["on"] + 0.5 * st["off"])
            print(f"| {name} | {r['tok_s']:.0f} | {st['on']:.2f} ({st['n_on']}) | {st['off']:.2f} ({st['n_off']}) | "
                  f"{r['tok_s_half']:.0f} | {r['train_peak_mb']:.0f} MB | {r['peak_mb']:.0f} MB |")
        if "error" not in s and "error" not in t:
            print(f"| ratio slimedge/TRL | {s['tok_s'] / t['tok_s']:.2f}x | | | {s['tok_s_half'] / t['tok_s_half']:.2f}x | "
                  f"{s['train_peak_mb'] / t['train_peak_mb']:.2f}x | {s['peak_mb'] / t['peak_mb']:.2f}x |")


if __name__ == "__main__":
    main()
