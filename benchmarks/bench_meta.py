"""Time and peak memory of one MAML meta-step: the engine vs higher (vs learn2learn).

Setting (the issue's reference): meta-batch 4 tasks, 5-shot support, 5 query slices,
5 inner SGD steps, 64x64 slices, base-16 depth-4 U-Net (GroupNorm), seg_loss, ``--threads``
(default 1) torch threads. Every variant runs in a fresh subprocess so its peak RSS
(``ru_maxrss``) is its own; memory is reported *above the setup baseline* (peak RSS minus
the RSS after building the model and tasks). Times are the best of ``--repeats`` meta-steps
after one warm-up step; each variant is run ``--rounds`` times and the best round kept.

Variants:
  engine-so / engine-fo     fewshot_transfer.meta.engine.meta_gradient (second / first order)
  engine-anil               the same, head-only inner loop (body features once per task)
  higher-so / higher-fo     higher.innerloop_ctx (first order: track_higher_grads=False)
  higher-anil               higher with an inner SGD over the head's parameters only
  l2l-so                    learn2learn.algorithms.MAML (only where importable)
  finetune-eq               plain Adam fine-tune steps with the same number of forward/backward
                            passes as one first-order meta-step (4 x (5 inner + 1 query) = 24)

Usage::

    python benchmarks/bench_meta.py                 # all variants, table + ratios
    python benchmarks/bench_meta.py --json out.json # also write the numbers
    python benchmarks/bench_meta.py --variant engine-so   # one variant (what the parent runs)
    python benchmarks/bench_meta.py --interleave 3        # time ratios, alternating in one process
                                                          # (median of per-repeat ratios)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

META_BATCH, N_SUPPORT, N_QUERY, INNER_STEPS, SIZE, BASE, DEPTH, INNER_LR = 4, 5, 5, 5, 64, 16, 4, 0.05
VARIANTS = ("engine-so", "engine-fo", "engine-anil", "higher-so", "higher-fo", "higher-anil", "l2l-so", "finetune-eq")
HEAD = ["head.weight", "head.bias"]


def _setup():
    import torch

    from fewshot_transfer.meta.engine import Task
    from fewshot_transfer.models import UNet

    torch.manual_seed(0)
    net = UNet(base=BASE, depth=DEPTH)
    gen = torch.Generator().manual_seed(1)
    tasks = []
    for _ in range(META_BATCH):
        x = torch.rand(N_SUPPORT + N_QUERY, 1, SIZE, SIZE, generator=gen)
        y = (torch.rand(N_SUPPORT + N_QUERY, 1, SIZE, SIZE, generator=gen) > 0.95).float()
        x = x + 0.3 * y
        tasks.append(Task(x[:N_SUPPORT], y[:N_SUPPORT], x[N_SUPPORT:], y[N_SUPPORT:]))
    return net, tasks


def _step_fn(variant: str, net, tasks):
    import torch

    from fewshot_transfer.losses import seg_loss

    if variant.startswith("engine"):
        from fewshot_transfer.meta.engine import (
            accumulate_grads,
            meta_gradient,
            module_params,
        )

        fo = variant == "engine-fo"
        names = HEAD if variant == "engine-anil" else None
        params = dict(net.named_parameters())

        def step():
            out = meta_gradient(
                net, module_params(net), tasks, steps=INNER_STEPS, lr=INNER_LR, first_order=fo, adapt_names=names
            )
            accumulate_grads(params, out.grads)

        return step
    if variant.startswith("higher"):
        import higher

        fo = variant == "higher-fo"
        inner_opt = torch.optim.SGD(
            net.head.parameters() if variant == "higher-anil" else net.parameters(), lr=INNER_LR
        )

        def step():
            for t in tasks:
                with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False, track_higher_grads=not fo) as (
                    fnet,
                    diffopt,
                ):
                    for _ in range(INNER_STEPS):
                        diffopt.step(seg_loss(fnet(t.x_support), t.y_support))
                    q = seg_loss(fnet(t.x_query), t.y_query) / len(tasks)
                    if fo:  # query gradient at the adapted weights, credited to the init
                        grads = torch.autograd.grad(q, list(fnet.parameters()), allow_unused=True)
                        for p, g in zip(net.parameters(), grads):
                            if g is not None:
                                p.grad = g if p.grad is None else p.grad + g
                    else:
                        q.backward()

        return step
    if variant == "l2l-so":
        import learn2learn as l2l

        maml = l2l.algorithms.MAML(net, lr=INNER_LR, first_order=False, allow_unused=True)

        def step():
            for t in tasks:
                learner = maml.clone()
                for _ in range(INNER_STEPS):
                    learner.adapt(seg_loss(learner(t.x_support), t.y_support))
                (seg_loss(learner(t.x_query), t.y_query) / len(tasks)).backward()

        return step
    if variant == "finetune-eq":
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        n_passes = META_BATCH * (INNER_STEPS + 1)

        def step():
            for i in range(n_passes):
                t = tasks[i % len(tasks)]
                opt.zero_grad(set_to_none=True)
                seg_loss(net(t.x_support), t.y_support).backward()
                opt.step()

        return step
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def run_variant(variant: str, repeats: int, threads: int) -> dict:
    """Run in this process (meant to be a fresh one): best time of ``repeats`` and peak RSS."""
    import torch

    torch.set_num_threads(threads)
    net, tasks = _setup()
    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step = _step_fn(variant, net, tasks)
    net.zero_grad(set_to_none=True)
    step()  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        net.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": variant,
        "time_s": min(times),
        "times_s": times,
        "cpu_s": min(cpu),
        "cpus_s": cpu,
        "peak_mb": peak,
        "setup_mb": rss_setup,
        "above_setup_mb": peak - rss_setup,
        "threads": torch.get_num_threads(),
    }


def interleaved(pairs: list[tuple[str, str]], repeats: int, threads: int) -> dict:
    """Time-only: alternate the variants of each pair in *one* process (A B A B ...), so a
    shared machine's load drift hits both alike; returns the median time ratio per pair."""
    import statistics

    import torch

    torch.set_num_threads(threads)
    out = {}
    for a, b in pairs:
        if _available(a) or _available(b):
            continue
        net, tasks = _setup()
        steps = {v: _step_fn(v, net, tasks) for v in (a, b)}
        times: dict[str, list[float]] = {a: [], b: []}
        for i in range(repeats + 1):
            for v in (a, b) if i % 2 == 0 else (b, a):
                net.zero_grad(set_to_none=True)
                t0 = time.process_time()
                steps[v]()
                if i:  # the first round is the warm-up
                    times[v].append(time.process_time() - t0)
        out[f"{a}/{b}"] = {
            "ratio_median": statistics.median(x / y for x, y in zip(times[a], times[b])),
            "clock": "cpu (process_time)",
            a: times[a],
            b: times[b],
        }
    return out


def _available(variant: str) -> str | None:
    """None when runnable, else the reason it is skipped."""
    import importlib.util

    if variant.startswith("higher") and importlib.util.find_spec("higher") is None:
        return "higher not installed (pip install -e '.[meta]')"
    if variant.startswith("l2l") and importlib.util.find_spec("learn2learn") is None:
        why = "does not build on Python >= 3.11" if sys.version_info >= (3, 11) else "not installed"
        return f"learn2learn {why}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=VARIANTS, help="run one variant in this process and print JSON")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list for the parent run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    ap.add_argument("--json", help="write all results to this file")
    ap.add_argument(
        "--interleave",
        type=int,
        metavar="N",
        help="time-only mode: N alternating repeats of engine vs higher (so and fo) and "
        "engine-fo vs finetune-eq in one process; robust on a busy machine",
    )
    args = ap.parse_args(argv)
    if args.interleave:
        res = interleaved(
            [
                ("engine-so", "higher-so"),
                ("engine-fo", "higher-fo"),
                ("engine-anil", "higher-anil"),
                ("engine-fo", "finetune-eq"),
                ("engine-so", "engine-fo"),
            ],
            args.interleave,
            args.threads,
        )
        for pair, r in res.items():
            print(f"{pair:<28} median time ratio {r['ratio_median']:.2f}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(res, fh, indent=1)
        return 0
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.repeats, args.threads)))
        return 0

    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    best: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for _ in range(args.rounds):
        for v in wanted:
            reason = _available(v)
            if reason:
                skipped[v] = reason
                continue
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--variant",
                    v,
                    "--repeats",
                    str(args.repeats),
                    "--threads",
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                skipped[v] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            old = best.get(v)
            if old is None or res["time_s"] < old["time_s"]:
                for key in ("peak_mb", "above_setup_mb", "cpu_s"):
                    res[key] = min(res[key], old[key]) if old else res[key]
                best[v] = res
            else:
                for key in ("peak_mb", "above_setup_mb", "cpu_s"):
                    old[key] = min(old[key], res[key])
    print(
        f"meta-step: meta-batch {META_BATCH}, {N_SUPPORT}-shot support, {N_QUERY} query, {INNER_STEPS} inner steps, "
        f"{SIZE}x{SIZE}, U-Net base {BASE} depth {DEPTH}; best of {args.repeats} steps x {args.rounds} rounds, "
        f"{args.threads} thread(s)"
    )
    print(f"{'variant':<16}{'time s':>9}{'CPU s':>9}{'peak MB':>10}{'setup MB':>10}{'above setup MB':>16}")
    for v, r in best.items():
        print(
            f"{v:<16}{r['time_s']:>9.2f}{r['cpu_s']:>9.2f}{r['peak_mb']:>10.0f}{r['setup_mb']:>10.0f}"
            f"{r['above_setup_mb']:>16.0f}"
        )
    for v, why in skipped.items():
        if v not in best:
            print(f"{v:<16}  skipped: {why}")

    def ratio(a: str, b: str, key: str) -> float | None:
        if a in best and b in best:
            return best[a][key] / best[b][key]
        return None

    mem = "above_setup_mb"
    ratios = {
        "engine/higher time (2nd order, target <= 1.0)": ratio("engine-so", "higher-so", "time_s"),
        "engine/higher memory above setup (2nd order, <= 1.0)": ratio("engine-so", "higher-so", mem),
        "engine/higher time (1st order, target <= 0.9)": ratio("engine-fo", "higher-fo", "time_s"),
        "engine/higher CPU time (2nd order, <= 1.0)": ratio("engine-so", "higher-so", "cpu_s"),
        "engine/higher CPU time (1st order, <= 0.9)": ratio("engine-fo", "higher-fo", "cpu_s"),
        "engine/higher memory above setup (1st order, <= 0.9)": ratio("engine-fo", "higher-fo", mem),
        "engine/higher time (ANIL, 2nd order)": ratio("engine-anil", "higher-anil", "time_s"),
        "engine/higher memory above setup (ANIL)": ratio("engine-anil", "higher-anil", mem),
        "engine/learn2learn time (2nd order)": ratio("engine-so", "l2l-so", "time_s"),
        "engine/learn2learn memory above setup (2nd order)": ratio("engine-so", "l2l-so", mem),
        "second/first order time (engine)": ratio("engine-so", "engine-fo", "time_s"),
        "first-order meta-step / equivalent fine-tune steps": ratio("engine-fo", "finetune-eq", "time_s"),
    }
    print("\nratios")
    for name, value in ratios.items():
        print(f"  {name:<56}{'n/a' if value is None else f'{value:.2f}'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": best, "skipped": skipped, "ratios": ratios}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
