"""Portable floats (issue #35): which kernel setting gives the same bits whatever x86-64
instruction set the CPU offers, and what it costs.

    python benchmarks/bench_portable.py                 # every setting x every emulated CPU, 40 steps
    python benchmarks/bench_portable.py --steps 200 --settings native,portable --cpus avx2 --repeats 3

One quick-profile cell's worth of training (the ``scratch`` learner through the project's
training loop: 64 px, U-Net base 8, batch 8, k = 5, seed 0, one thread; ``--steps`` of the
200) and its evaluation on the test set, in a FRESH subprocess per (emulated CPU, setting):
the variables are read once, when the process starts (glibc's ``GLIBC_TUNABLES``) or when a
library starts (ATen's ``ATEN_CPU_CAPABILITY``, oneDNN's ``ONEDNN_MAX_CPU_ISA``, MKL's
``MKL_ENABLE_INSTRUCTIONS`` / ``MKL_CBWR``, numpy's ``NPY_DISABLE_CPU_FEATURES``).

An *emulated CPU* caps every library at what a CPU offering only that instruction set would
use; a *setting* is what a run could pin on top of it (``portable`` is the one
``run.portable`` ships, from ``fewshot_transfer/portable.py``). A setting is portable when its
bits (trained parameters and test metrics) are the same under every emulated CPU. Each
emulated CPU generates its own phantom (its fingerprint is printed: the data must agree too).
Prints per (setting, CPU): hashes, fit CPU seconds and the ratio to the native setting on the
same CPU; then which runs gave identical bits; then how often glibc's FMA and baseline libm
round Python's ``x ** y`` / ``math.exp`` differently (Adam's bias corrections, the ramps).

NNPACK (batches >= 16 with oneDNN off: the evaluation) needs AVX2 and cannot be capped by an
environment variable, so emulated CPUs below AVX2 still run it; ``portable`` switches it off.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fewshot_transfer.portable import pinned_env

ROOT = Path(__file__).resolve().parents[1]

#: What a CPU offering only this instruction set would run (this machine's best is AVX2): torch,
#: oneDNN, MKL, numpy and glibc's libm (``GLIBC_TUNABLES`` hides features from its ifunc choice).
CPUS: dict[str, dict[str, str]] = {
    "avx2": {},
    "avx": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "AVX",
        "MKL_ENABLE_INSTRUCTIONS": "AVX",
        "NPY_DISABLE_CPU_FEATURES": "X86_V3",
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-FMA4",
    },
    "sse41": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "NPY_DISABLE_CPU_FEATURES": "X86_V3",
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX,-AVX2,-FMA,-FMA4,-F16C",
    },
}
_ATEN0 = {"ATEN_CPU_CAPABILITY": "default"}
#: Candidate settings: environment variables, plus flags set after ``import torch`` (oneDNN,
#: NNPACK, deterministic algorithms). ``portable`` is what ``run.portable`` ships.
SETTINGS: dict[str, dict] = {
    "native": {},
    "aten-default": {"env": _ATEN0},
    "aten-avx2+onednn-avx2": {"env": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}},
    "deterministic": {"deterministic": True},
    "mkl-cbwr": {"env": {"MKL_CBWR": "COMPATIBLE"}},
    "onednn-sse41": {"env": {**_ATEN0, "ONEDNN_MAX_CPU_ISA": "SSE41"}},
    "onednn-sse41+cbwr": {"env": {**_ATEN0, "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}},
    "mkldnn-off": {"env": _ATEN0, "mkldnn": False},
    "mkldnn-off+cbwr": {"env": {**_ATEN0, "MKL_CBWR": "COMPATIBLE"}, "mkldnn": False},
    "mkldnn-off+cbwr+aten-avx2": {"env": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}, "mkldnn": False},
    "portable": {"env": "package", "mkldnn": False, "nnpack": False},
}
#: Lower caps win: a setting cannot give a CPU instructions it does not have.
ISA_ORDER = {"ONEDNN_MAX_CPU_ISA": ["SSE41", "AVX", "AVX2"], "ATEN_CPU_CAPABILITY": ["default", "avx2"]}
PINS = {
    *ISA_ORDER,
    "DNNL_MAX_CPU_ISA",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "NPY_DISABLE_CPU_FEATURES",
    "GLIBC_TUNABLES",
}


def child_env(cpu: str, setting: str, cache: str) -> dict[str, str]:
    """The child's environment: the emulated CPU's caps, the setting's pins on top (the lower cap wins)."""
    env = {k: v for k, v in os.environ.items() if k not in PINS}
    env.update(CPUS[cpu])
    pins = SETTINGS[setting].get("env", {})
    if pins == "package":
        env = pinned_env(env)  # exactly what run.portable sets, on top of what the CPU hides
        pins = {}
    for key, value in pins.items():
        order = ISA_ORDER.get(key)
        if not (order and key in env and order.index(env[key]) < order.index(value)):
            env[key] = value
    if "ONEDNN_MAX_CPU_ISA" in env:
        env["DNNL_MAX_CPU_ISA"] = env["ONEDNN_MAX_CPU_ISA"]
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", FTBENCH_CACHE=f"{cache}-{cpu}", PYTHONPATH=str(ROOT))
    return env


def child(setting: str, steps: int) -> dict:
    """Train and score one cell in this process; hashes and seconds as a dict."""
    import torch

    from fewshot_transfer import learners
    from fewshot_transfer.config import resolve_config
    from fewshot_transfer.harness.benchmark import prepare
    from fewshot_transfer.harness.runner import score
    from fewshot_transfer.portable import float_mode

    torch.set_num_threads(1)
    flags = SETTINGS[setting]
    torch.backends.mkldnn.enabled = flags.get("mkldnn", True)
    torch.backends.nnpack.set_flags(flags.get("nnpack", True))
    torch.use_deterministic_algorithms(flags.get("deterministic", False))
    cfg = resolve_config(None, [f"train.steps={steps}", "run.shots='5'"])
    with tempfile.TemporaryDirectory() as out:
        bench = prepare(cfg, Path(out))
        cls = learners.get("scratch")
        ctx = bench.context(cls, 5, 0)
        torch.manual_seed(ctx.seed)
        c0, w0 = time.process_time(), time.perf_counter()
        segmenter = cls().fit(ctx)
        fit_cpu, fit_wall = time.process_time() - c0, time.perf_counter() - w0
        summary, per_slice, _, _ = score(segmenter, bench.test_set, 0.5)
    h = hashlib.sha256()
    for name, t in sorted(segmenter.model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    metrics = json.dumps({"metrics": summary, "dice": [r.get("dice") for r in per_slice]}, sort_keys=True)
    return {
        "data": f"{bench.source.fingerprint[:6]}/{bench.target.fingerprint[:6]}",
        "params": h.hexdigest()[:12],
        "metrics": hashlib.sha256(metrics.encode()).hexdigest()[:12],
        "dice": summary["dice"],
        "fit_cpu_s": fit_cpu,
        "fit_wall_s": fit_wall,
        "aten": torch.backends.cpu.get_cpu_capability(),
        "mode": float_mode(),
    }


def run_child(cpu: str, setting: str, steps: int, cache: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", setting, "--steps", str(steps)],
        env=child_env(cpu, setting, cache),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode:
        raise RuntimeError(f"{setting} on {cpu} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="training steps of the cell (the quick profile's is 200)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    ap.add_argument("--cpus", default=",".join(CPUS), help=f"emulated CPUs: comma list of {', '.join(CPUS)}")
    ap.add_argument("--repeats", type=int, default=1, help="times each child runs (interleaved); seconds = median")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    settings, cpus = args.settings.split(","), args.cpus.split(",")
    cache = tempfile.mkdtemp(prefix="bench-portable-cache-")
    for cpu in cpus:
        run_child(cpu, "native", 1, cache)  # fills this CPU's dataset cache (untimed)
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for setting in settings:
            for cpu in cpus:
                r = run_child(cpu, setting, args.steps, cache)
                runs.setdefault((setting, cpu), []).append(r)
                if len({(x["params"], x["metrics"]) for x in runs[(setting, cpu)]}) > 1:
                    raise RuntimeError(f"{setting} on {cpu} is not reproducible in itself: {runs[(setting, cpu)]}")
    cpu_s = {key: statistics.median(x["fit_cpu_s"] for x in rs) for key, rs in runs.items()}
    print(f"{args.steps} training steps of scratch k = 5 + test-set scoring, 1 thread, {args.repeats} repeat(s)")
    print(
        f"{'setting':<27}{'cpu':<6}{'aten':<8}{'mode':<11}{'data':<14}{'params':<14}{'metrics':<14}"
        f"{'dice':>7}{'fit cpu s':>10}{'ratio':>7}"
    )
    for (setting, cpu), rs in runs.items():
        r, base = rs[0], cpu_s.get(("native", cpu))
        ratio = f"{cpu_s[(setting, cpu)] / base:.2f}" if base else "-"
        print(
            f"{setting:<27}{cpu:<6}{r['aten']:<8}{r['mode']:<11}{r['data']:<14}{r['params']:<14}{r['metrics']:<14}"
            f"{r['dice']:>7.4f}{cpu_s[(setting, cpu)]:>10.2f}{ratio:>7}"
        )
    print("\nidentical bits (parameters and metrics):")
    groups: dict[tuple[str, str], list[str]] = {}
    for (setting, cpu), rs in runs.items():
        groups.setdefault((rs[0]["params"], rs[0]["metrics"]), []).append(f"{setting}@{cpu}")
    for (p, _), members in groups.items():
        print(f"  {p}: {' = '.join(members)}")
    print("\nportable (one hash under every emulated CPU):")
    for setting in settings:
        hashes = {(runs[(setting, c)][0]["params"], runs[(setting, c)][0]["metrics"]) for c in cpus}
        native = [cpu_s[(setting, c)] / cpu_s[("native", c)] for c in cpus if ("native", c) in cpu_s]
        cost = f"; fit CPU time {min(native):.2f}-{max(native):.2f}x native" if native else ""
        print(f"  {setting:<27}{'YES' if len(hashes) == 1 else f'no ({len(hashes)} hashes)'}{cost}")
    print("\nglibc libm, FMA vs baseline variants (Python floats, values that differ):")
    libm = [_libm(env) for env in ({}, {"GLIBC_TUNABLES": CPUS["avx"]["GLIBC_TUNABLES"]})]
    for name in libm[0]:
        diff = [k for k, (x, y) in enumerate(zip(libm[0][name], libm[1][name])) if x != y]
        print(
            f"  {name}: {len(diff)} of {len(libm[0][name])}"
            + (f", first at {LIBM_ARGS[name][diff[0]]}" if diff else "")
        )


#: Python-level libm calls a cell makes: Adam's ``beta ** step`` (500 pretraining steps) and
#: the consistency ramp ``exp(-5 (1 - step / ramp) ** 2)`` of the semi-supervised learners.
LIBM_ARGS = {
    "beta ** step": [f"{b}**{s}" for b in (0.9, 0.999) for s in range(1, 2001)],
    "ramp exp": [f"ramp {r} step {s}" for r in (50, 100, 200, 300) for s in range(1, r + 1)],
}
_LIBM = """
import json, math
print(json.dumps({
    "beta ** step": [b ** s for b in (0.9, 0.999) for s in range(1, 2001)],
    "ramp exp": [math.exp(-5.0 * (1.0 - s / r) ** 2) for r in (50, 100, 200, 300) for s in range(1, r + 1)],
}))
"""


def _libm(extra: dict[str, str]) -> dict[str, list[float]]:
    done = subprocess.run([sys.executable, "-c", _LIBM], env={**os.environ, **extra}, capture_output=True, text=True)
    return json.loads(done.stdout)


if __name__ == "__main__":
    main()
