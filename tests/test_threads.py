"""The thread policy (slimedge/tp.py): cgroup quota reader on fake cgroup trees, precedence of the count,
the OpenMP environment, and real child processes pinned to one CPU (os.sched_setaffinity, taskset) whose torch,
C-kernel and llama.cpp settings must all come out as one thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from slimedge import threads as tp
from slimedge.errors import SlimedgeError

OMP_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", tp.ENV)


@pytest.fixture
def clean(monkeypatch):
    """No thread variables, no remembered override; whatever a test sets is undone after it."""
    for k in OMP_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(tp, "_override", [])
    monkeypatch.setattr(tp, "_ours", {})
    return monkeypatch


def _cgroup(tmp: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    pc = tmp / "proc-self-cgroup"
    pc.write_text(proc)
    return root, pc


def test_cgroup_v2_quota(tmp_path):
    root, pc = _cgroup(tmp_path, "0::/user.slice/job\n", {"user.slice/job/cpu.max": "150000 100000\n"})
    assert tp.cgroup_cpu_limit(root, pc) == 1.5


def test_cgroup_v2_unlimited_and_missing(tmp_path):
    root, pc = _cgroup(tmp_path, "0::/job\n", {"job/cpu.max": "max 100000\n", "cpu.max": "max 100000\n"})
    assert tp.cgroup_cpu_limit(root, pc) is None
    assert tp.cgroup_cpu_limit(tmp_path / "nowhere", tmp_path / "no-proc") is None


def test_cgroup_v2_parent_limit_wins(tmp_path):
    """A limit on a folder above the process's own group applies too: the smallest one counts."""
    root, pc = _cgroup(tmp_path, "0::/a/b\n", {"a/cpu.max": "100000 100000", "a/b/cpu.max": "400000 100000"})
    assert tp.cgroup_cpu_limit(root, pc) == 1.0


def test_cgroup_v2_container_root(tmp_path):
    """Inside a container /proc/self/cgroup says "/": the namespace root's cpu.max is the limit."""
    root, pc = _cgroup(tmp_path, "0::/\n", {"cpu.max": "250000 100000"})
    assert tp.cgroup_cpu_limit(root, pc) == 2.5


def test_cgroup_v1_quota(tmp_path):
    proc = "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n"
    root, pc = _cgroup(tmp_path, proc, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
                                        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                                        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                                        "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert tp.cgroup_cpu_limit(root, pc) == 0.5


def test_cgroup_v1_unlimited(tmp_path):
    root, pc = _cgroup(tmp_path, "1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert tp.cgroup_cpu_limit(root, pc) is None


@pytest.mark.parametrize("quota,expect", [("50000 100000", 1), ("150000 100000", 1), ("max 100000", None)])
def test_usable_cpus_bounded_by_quota(tmp_path, clean, quota, expect):
    root, pc = _cgroup(tmp_path, "0::/\n", {"cpu.max": quota})
    clean.setattr(tp, "CGROUP_ROOT", root)
    clean.setattr(tp, "PROC_CGROUP", pc)
    n_mask = len(os.sched_getaffinity(0))
    assert tp.usable_cpus() == (min(n_mask, expect) if expect else n_mask)
    assert tp.policy().threads == tp.usable_cpus()


def test_physical_cores_within_mask(tmp_path):
    """Two cores with two hardware threads each (cpus 0,2 on core 0; 1,3 on core 1)."""
    info = "".join(f"processor\t: {c}\nphysical id\t: 0\ncore id\t\t: {c % 2}\n\n" for c in range(4))
    f = tmp_path / "cpuinfo"
    f.write_text(info)
    assert tp.physical_cores({0, 1, 2, 3}, f) == 2
    assert tp.physical_cores({0, 2}, f) == 1
    assert tp.physical_cores({0}, tmp_path / "none") == 1  # no cpuinfo: the logical count


def test_precedence(clean):
    n = tp.usable_cpus()
    assert tp.policy() == tp.Policy(n, "usable CPUs")
    clean.setenv("OMP_NUM_THREADS", "3")
    assert tp.policy() == tp.Policy(3, "OMP_NUM_THREADS")
    clean.setenv(tp.ENV, "5")
    assert tp.policy() == tp.Policy(5, tp.ENV)
    assert tp.policy(7) == tp.Policy(7, "--threads")
    clean.setenv(tp.ENV, "off")
    assert not tp.policy().enabled


@pytest.mark.parametrize("value", ["many", "-2"])
def test_bad_env_is_one_line(clean, value):
    clean.setenv(tp.ENV, value)
    with pytest.raises(SlimedgeError, match=tp.ENV):
        tp.policy()


def test_configure_exports_passive_openmp(clean):
    pol = tp.configure()
    assert os.environ["OMP_NUM_THREADS"] == str(pol.threads)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    # a short spin, not 0: ggml's barriers share libgomp with torch (0 made in-process decoding several times slower)
    assert os.environ["GOMP_SPINCOUNT"] == tp.SPINCOUNT == "1000" and os.environ["KMP_BLOCKTIME"] == "0"
    assert tp.policy() == pol  # its own OMP_NUM_THREADS is not mistaken for the user's


def test_configure_keeps_users_openmp_settings(clean):
    clean.setenv("OMP_WAIT_POLICY", "ACTIVE")
    clean.setenv("OMP_NUM_THREADS", "1")
    tp.configure()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and os.environ["OMP_NUM_THREADS"] == "1"
    tp.configure(2)  # --threads wins over OMP_NUM_THREADS, not over the user's wait policy
    assert os.environ["OMP_NUM_THREADS"] == "2" and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_native_env_drops_only_what_configure_set(clean):
    """The llama.cpp bench children measure with llama.cpp's own OpenMP settings; the user's stay."""
    clean.setenv("KMP_BLOCKTIME", "200")
    tp.configure()
    env = tp.native_env()
    assert "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env and env["KMP_BLOCKTIME"] == "200"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and env["PATH"] == os.environ["PATH"]


def test_off_leaves_everything_alone(clean):
    clean.setenv(tp.ENV, "off")
    tp.configure()
    assert "OMP_NUM_THREADS" not in os.environ and "OMP_WAIT_POLICY" not in os.environ
    assert tp.kernel_threads() == len(os.sched_getaffinity(0))


def test_threads_option_is_the_override(clean):
    """``-t N`` on a command sets the count every later call uses (kernels, llama.cpp) and the children's env."""
    from slimedge.cli.options import threads_option
    from slimedge.quant.backend import default_threads

    seen = {}

    @click.command()
    @threads_option
    def cmd(threads):
        seen.update(kernels=default_threads(), llama=tp.llama_threads(), omp=os.environ["OMP_NUM_THREADS"])

    res = CliRunner().invoke(cmd, ["-t", "3"])
    assert res.exit_code == 0, res.output
    assert seen == {"kernels": 3, "llama": 3, "omp": "3"}
    assert tp.policy().why == "usable CPUs"  # the override lasts as long as its command


PROBE = textwrap.dedent("""
    import json, os, sys
    from slimedge.threads import torch_threads, llama_threads, usable_cpus
    from slimedge.quant.backend import default_threads
    n = torch_threads()
    import torch
    print(json.dumps({"usable": usable_cpus(), "torch": torch.get_num_threads(), "policy": n,
                      "interop": torch.get_num_interop_threads(), "kernels": default_threads(),
                      "llama": llama_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
                      "wait": os.environ.get("OMP_WAIT_POLICY")}))
""")


def _child_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in OMP_VARS}


def _check_one(out: str) -> None:
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"usable": 1, "torch": 1, "policy": 1, "interop": 1, "kernels": 1, "llama": 1, "omp": "1",
                   "wait": "PASSIVE"}


def test_child_pinned_to_one_cpu_uses_one_thread():
    """A real process under os.sched_setaffinity({cpu}) sets torch, the kernels and llama.cpp to 1 thread."""
    cpu = min(os.sched_getaffinity(0))
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=_child_env(), timeout=120,
                       preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert r.returncode == 0, r.stderr
    _check_one(r.stdout)


def test_cli_under_taskset_exports_one_thread():
    """``taskset -c N slimedge ...``: the command line's start exports OpenMP settings for one thread."""
    cpu = min(os.sched_getaffinity(0))
    code = ("import os, json\nfrom slimedge.cli import main\ntry:\n    main(['targets', '-h'])\nexcept SystemExit:\n"
            "    pass\nprint(json.dumps([os.environ.get(k) for k in ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY')]))")
    r = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-c", code], capture_output=True, text=True,
                       env=_child_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == ["1", "PASSIVE"]
    r = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-c", PROBE], capture_output=True, text=True,
                       env=_child_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    _check_one(r.stdout)
