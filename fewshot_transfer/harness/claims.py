"""Claims judging: paired comparisons of learners, Holm-corrected, verdicts over data draws.

The one implementation of "A − B at k, paired over units, Holm over a family" that
``ftbench claims`` (and its older spelling ``scripts/judge_claims.py``) and the positive
controls (``fewshot_transfer/experiments/controls.py``) use. Reads cell records only: no torch, no
learner is imported (the reporting layer).

    ftbench claims configs/claims.toml \\
        --draw 0=results/claims --draw 1=results/claims-replication --out results/claims/claims.md

A draw may be several run directories (``--draw coronacases=results/real-claims/fold0,...``,
or a folder whose sub-folders are runs, e.g. one per cross-validation fold): the paired unit
is then (run directory, seed), so fold f's seed s is compared with fold f's seed s only.

A claim is a list of comparisons ``"LEARNER - REFERENCE @ K"`` (``configs/claims.toml``:
the seed paper's claims, each learner against its own control arm). On every draw each
comparison is a paired t-test over the seeds both rows have (training replicates averaged
per seed first; ``source-only`` serves every k), Holm-corrected over every comparison of
the file on that draw. Verdict per comparison, over the draws:

* **supported** — Holm p < 0.05 with a positive mean on every draw;
* **reversed** — Holm p < 0.05 with a negative mean on every draw;
* **not replicated** — significant on some draws only (or in opposite directions);
* **no effect detected** — significant on none; the table then gives the largest effect
  the CIs leave room for (max |CI bound| over the draws), which is what the null rules out.

A claims file with ``preregistered = true`` was committed before the first cell of the runs
it judges: the table names the commit that first added it. A claim with
``added_after = "why"`` was added later: its rows are marked so.

"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np

from fewshot_transfer.atomic import atomic_write_text
from fewshot_transfer.config import load_toml
from fewshot_transfer.harness.stats import holm, paired_diff, parse_comparison
from fewshot_transfer.harness.store import load_records

#: The significance level of every verdict (after Holm).
ALPHA = 0.05
#: Learners whose one cell serves every k (trained on no target label).
K_INDEPENDENT = {"source-only"}


def dice_by_seed(records: list[dict]) -> dict[tuple[str, int], dict]:
    """(learner, k) -> {unit: Dice averaged over training replicates} of the finished cells.

    The unit is the seed, or (run index, seed) for records tagged ``_run`` by :func:`load_draw`."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok":
            k = -1 if r["learner"] in K_INDEPENDENT else int(r["k"])
            unit = (int(r["_run"]), int(r["seed"])) if "_run" in r else int(r["seed"])
            acc[(r["learner"], k, unit)].append(float(r["metrics"]["dice"]))
    out: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    for (name, k, seed), values in acc.items():
        out[(name, k)][seed] = float(np.mean(values))
    return out


def compare(table: dict, text: str) -> dict:
    """The paired difference of one comparison on one draw (NaNs when a row is missing)."""
    a, b, k = parse_comparison(text)
    rows = [table.get((n, -1 if n in K_INDEPENDENT else k), {}) for n in (a, b)]
    seeds = sorted(set(rows[0]) & set(rows[1]))
    if len(seeds) < 2:
        return {"comparison": text, "mean": np.nan, "lo": np.nan, "hi": np.nan, "n": len(seeds), "p_value": np.nan}
    d = paired_diff([rows[0][s] for s in seeds], [rows[1][s] for s in seeds])
    return {"comparison": text, **{key: d[key] for key in ("mean", "lo", "hi", "n", "p_value")}}


def judge_draw(table: dict, comparisons: list[str]) -> list[dict]:
    """Every comparison on one draw, Holm-corrected over all of them (missing ones count as p = 1)."""
    out = [compare(table, text) for text in comparisons]
    for c, p in zip(out, holm([1.0 if np.isnan(c["p_value"]) else c["p_value"] for c in out])):
        c["p_holm"] = p
        c["significant"] = bool(p < ALPHA and not np.isnan(c["mean"]))
    return out


def verdict(per_draw: list[dict]) -> str:
    if any(np.isnan(c["mean"]) for c in per_draw):
        return "incomplete"
    signs = {np.sign(c["mean"]) for c in per_draw if c["significant"]}
    if all(c["significant"] for c in per_draw) and len(signs) == 1:
        return "supported" if signs == {1.0} else "reversed"
    if signs:
        return "not replicated"
    return "no effect detected"


def judge(claims: list[dict], draws: dict[str, list[dict]]) -> list[dict]:
    """One row per comparison: each draw's numbers and the verdict over the draws."""
    comparisons = [text for claim in claims for text in claim["comparisons"]]
    tables = {name: dict(dice_by_seed(records)) for name, records in draws.items()}
    judged = {name: {c["comparison"]: c for c in judge_draw(t, comparisons)} for name, t in tables.items()}
    rows = []
    for claim in claims:
        for text in claim["comparisons"]:
            per_draw = [judged[name][text] for name in draws]
            bound = max((max(abs(c["lo"]), abs(c["hi"])) for c in per_draw if not np.isnan(c["mean"])), default=np.nan)
            rows.append(
                {
                    "claim": claim["name"],
                    "comparison": text,
                    "draws": per_draw,
                    "verdict": verdict(per_draw),
                    "bound": bound,
                    **({"added_after": claim["added_after"]} if claim.get("added_after") else {}),
                }
            )
    return rows


def load_draw(text: str) -> list[dict]:
    """The records of one draw: ``DIR``, ``DIR,DIR,...`` or a folder of run folders (one per fold);
    with several runs each record is tagged with its run's index (the pairing unit's first half)."""
    dirs = [Path(p) for p in text.split(",") if p]
    if len(dirs) == 1 and not (dirs[0] / "cells").is_dir() and dirs[0].is_dir():
        dirs = sorted(d for d in dirs[0].iterdir() if (d / "cells").is_dir())
        if not dirs:
            raise ValueError(f"{text}: neither a run directory (cells/) nor a folder of run directories")
    if len(dirs) == 1:
        return load_records(dirs)
    return [{**r, "_run": i} for i, d in enumerate(dirs) for r in load_records([d])]


def registered_in(path: Path) -> str:
    """The commit that first added ``path`` (its pre-registration), or "" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%h %cI", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return ""
    lines = [line for line in out if line.strip()]
    return lines[-1] if lines else ""


def markdown(rows: list[dict], draw_names: list[str], command: str, *, title: str = "", registered: str = "") -> str:
    def cell(c: dict) -> str:
        if np.isnan(c["mean"]):
            return f"— (n = {c['n']})"
        star = " *" if c["significant"] else ""
        return f"{c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]{star}, Holm p {c['p_holm']:.3g}, n = {c['n']}"

    head = ["claim", "comparison", *[f"draw {d}" for d in draw_names], "verdict", "largest effect the CIs allow"]
    lines = [
        f"# {title or 'The seed' + chr(39) + 's claims, each against its own control, on independent data draws'}",
        "",
        f"Command (from the repository root): `{command}`",
        "",
        *([f"Comparisons pre-registered in commit {registered}.", ""] if registered else []),
        "Paired difference of Dice over seeds, mean [95% t-CI]; Holm over every comparison of the table on "
        "that draw; `*` = Holm p < 0.05. Verdicts: supported / reversed = significant the same way on every "
        "draw; not replicated = significant on some draws only; no effect detected = on none.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        bound = "" if np.isnan(r["bound"]) else f"±{r['bound']:.3f}"
        late = f" (added after the fact: {r['added_after']})" if r.get("added_after") else ""
        lines.append(
            f"| {r['claim']}{late} | {r['comparison']} | "
            + " | ".join(cell(c) for c in r["draws"])
            + f" | {r['verdict']} | {bound} |"
        )
    return "\n".join(lines) + "\n"


def judge_file(claims_path: Path, draw_specs: list[str], out: Path, command: str) -> str:
    """Judge ``claims_path`` (``[[claim]]`` tables) on the draws ``NAME=RUN_DIR[,RUN_DIR...]``;
    write the markdown table to ``out`` and its numbers beside it (``.json``); returns the table."""
    claims_file = load_toml(Path(claims_path))
    claims = claims_file.get("claim", [])
    if not claims:
        raise ValueError(f"{claims_path}: no [[claim]] tables; each needs a name and a list of comparisons")
    for claim in claims:
        for text in claim["comparisons"]:
            parse_comparison(text)
    draws: dict[str, list[dict]] = {}
    for item in draw_specs:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--draw {item!r}: expected NAME=RUN_DIR (e.g. 0=results/claims)")
        draws[name] = load_draw(path)
    rows = judge(claims, draws)
    registered = registered_in(Path(claims_path).resolve()) if claims_file.get("preregistered") else ""
    text = markdown(rows, list(draws), command, title=str(claims_file.get("title", "")), registered=registered)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    atomic_write_text(
        out.with_suffix(".json"),
        json.dumps(
            {"command": command, **({"registered": registered} if registered else {}), "rows": rows},
            indent=2,
            default=float,
        )
        + "\n",
    )
    return text
