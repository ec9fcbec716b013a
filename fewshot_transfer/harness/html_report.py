"""One self-contained HTML page of one run or several merged: what a paper's figures come from.

Built from the recorded cells alone (no training, no torch, no learner imports): the
leaderboard per k (sortable, with the header facts and each row's reproduce command), the
transfer-gain and Dice curves, per-seed pairs and per-slice Dice, a forest plot of the
mechanism gains, a prediction gallery, the failed / collapsed / pruned cells with why, and
training curves. Figures are matplotlib PNGs embedded as base64 and the few lines of
JavaScript (column sorting) are inline, so the page opens offline and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

from fewshot_transfer import __version__
from fewshot_transfer.atomic import atomic_write_text
from fewshot_transfer.harness import gallery, report_figures
from fewshot_transfer.harness.leaderboard import (
    build_rows,
    fmt_ci,
    fmt_gain,
    fmt_mechanism,
    fmt_seconds,
    fmt_selection,
    header_meta,
    k_title,
    power_summary,
    row_notes,
)
from fewshot_transfer.harness.outputs import saved_shots
from fewshot_transfer.harness.plots import loss_curves_plot, prediction_gallery, transfer_gain_plot
from fewshot_transfer.harness.report import render_sections
from fewshot_transfer.harness.report_problems import Problem, collapsed_cells, failed_cells, pruned_trials
from fewshot_transfer.harness.store import load_records

REPORT_FILE = "report.html"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1400px;
 padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.5em}
th,td{border:1px solid #ddd;padding:3px 6px;vertical-align:top}th{background:#f3f3f3;text-align:left}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \\2195";color:#999}
th[aria-sort=ascending]:after{content:" \\2191"}th[aria-sort=descending]:after{content:" \\2193"}
td.num{text-align:right;white-space:nowrap}code{font-size:11px;word-break:break-all}td.cmd{min-width:30em}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 1em;font-size:13px}dl.facts dt{font-weight:600}
dl.facts dd{margin:0}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}.warn{color:#a40000}.note{font-size:12px;color:#555}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:11px}nav ul{columns:2;font-size:13px}
"""

#: Click a column header to sort its table (again: the other way); numbers sort as numbers.
_JS = """
(function(){
  function key(td){var n=td.getAttribute('data-num');if(n!==null&&n!==''&&isFinite(+n))return +n;
    return (td.getAttribute('data-v')||td.textContent).toLowerCase();}
  function sortBy(th){
    var table=th.closest('table'),body=table.tBodies[0];
    var i=Array.prototype.indexOf.call(th.parentNode.children,th);
    var asc=th.getAttribute('aria-sort')!=='ascending';
    Array.prototype.forEach.call(th.parentNode.children,function(h){h.removeAttribute('aria-sort');});
    th.setAttribute('aria-sort',asc?'ascending':'descending');
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
      if(typeof x!==typeof y)return typeof x==='number'?-1:1;return (x<y?-1:x>y?1:0)*(asc?1:-1);});
    rows.forEach(function(r){body.appendChild(r);});
  }
  document.querySelectorAll('table.sortable th').forEach(function(th){
    th.addEventListener('click',function(){sortBy(th);});});
})();
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _img(data: bytes | None, alt: str, caption: str) -> str:
    if not data:
        return f'<p class="note">{_e(alt)}: nothing to draw in these runs.</p>'
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img alt="{_e(alt)}" src="{src}"><figcaption>{_e(caption)}</figcaption></figure>'


def _num(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def _fmt_p(value: float) -> str:
    return "" if value is None or math.isnan(value) else format(value, ".3g")


def check_run_dirs(run_dirs: list[Path]) -> None:
    """Refuse anything that is not a run directory, naming it."""
    for d in run_dirs:
        if not Path(d).is_dir():
            raise ValueError(f"{d} does not exist; give the --out directory of `ftbench run` or `ftbench grid collect`")
        if not (Path(d) / "cells").is_dir():
            raise ValueError(
                f"{d} is not a run directory (it has no cells/ folder); give the --out directory of `ftbench run` "
                "or `ftbench grid collect`"
            )


def _facts(run_dirs: list[Path], records: list[dict], rows: list[dict]) -> dict[str, str]:
    """The header: ``header_meta`` plus the provenance a reader needs to trust or redo a number."""
    facts: dict[str, str] = {"runs": ", ".join(str(d) for d in run_dirs)}
    for d in run_dirs:
        saved = Path(d) / "leaderboard.json"
        if saved.is_file():
            for key, value in (json.loads(saved.read_text()).get("meta") or {}).items():
                if key in ("source", "target", "support pool", "test set", "grid", "workers"):
                    facts.setdefault(key, str(value))
    facts.update(header_meta(records))
    facts.setdefault("machine", "not recorded (cells from before provenance.machine)")
    prov = [r.get("provenance", {}) for r in records]
    code = Counter(
        f"git {p.get('code', {}).get('git') or '?'}, source {p.get('code', {}).get('source_sha', '?')}" for p in prov
    )
    facts["code"] = "; ".join(f"{c} ({n} cells)" for c, n in sorted(code.items()))
    data = Counter(
        ", ".join(f"{k} {v}" for k, v in sorted(p.get("data", {}).items()) if isinstance(v, str)) or "not recorded"
        for p in prov
    )
    facts["data fingerprints"] = "; ".join(f"{d} ({n} cells)" for d, n in sorted(data.items()))
    configs = Counter(str(p.get("config_hash", "?")) for p in prov)
    facts["config hash"] = "; ".join(f"{c} ({n} cells)" for c, n in sorted(configs.items()))
    devices = Counter(f"{p.get('device', '?')}, {p.get('threads', '?')} thread(s)" for p in prov)
    facts["device"] = "; ".join(f"{d} ({n} cells)" for d, n in sorted(devices.items()))
    rules = sorted({fmt_selection(r) or "defaults" for r in rows if r.get("applicable", True)})
    facts["selection rule"] = " | ".join(rules)
    ok = sum(r["status"] == "ok" for r in records)
    facts["cells"] = f"{len(records)} ({ok} ok, {len(records) - ok} failed)"
    facts["power"] = power_summary(rows)
    facts["report"] = f"ftbench {__version__}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, from the recorded cells only"
    return facts


def _leaderboard_tables(rows: list[dict]) -> str:
    heads = [
        "rank",
        "learner",
        "family",
        "Dice (± 95% CI)",
        "gain (± 95% CI)",
        "p (Holm)",
        "mechanism gain vs own control",
        "p mech. (Holm)",
        "pred / true lesion %",
        "seeds",
        "s / cell",
        "selection",
        "notes",
        "reproduce",
    ]
    out = []
    for label, k in dict.fromkeys((r["k_label"], r["k"]) for r in rows):
        sub = [r for r in rows if r["k_label"] == label]
        sub.sort(key=lambda r: (not r.get("applicable", True), r.get("rank", 99), -_finite(r["dice"])))
        body = []
        for r in sub:
            frac = (
                ""
                if math.isnan(r["pred_fraction"])
                else f"{100 * r['pred_fraction']:.2f} / {100 * r['true_fraction']:.2f}"
            )
            cells = [
                (str(r.get("rank", "")), _num(float(r["rank"])) if "rank" in r else ""),
                (r["learner"], None),
                (r.get("family", ""), None),
                (fmt_ci(r["dice"], r["dice_lo"], r["dice_hi"]), _num(r["dice"])),
                (fmt_gain(r), _num(r["gain"])),
                (_fmt_p(r["gain_p_holm"]), _num(r["gain_p_holm"])),
                (fmt_mechanism(r), _num(r.get("mech", math.nan))),
                (_fmt_p(r.get("mech_p_holm", math.nan)), _num(r.get("mech_p_holm", math.nan))),
                (frac, _num(r["pred_fraction"])),
                (str(r["n_seeds"]), _num(float(r["n_seeds"]))),
                (fmt_seconds(r), _num(r.get("cost_s", math.nan))),
                (fmt_selection(r), None),
                (row_notes(r).replace("**", ""), None),
            ]
            tds = "".join(
                f'<td class="num" data-num="{num}">{_e(text)}</td>' if num is not None else f"<td>{_e(text)}</td>"
                for text, num in cells
            )
            tds += f"<td class='cmd'><code>{_e(r['command'])}</code></td>"
            body.append(f"<tr>{tds}</tr>")
        out.append(
            f"<h3>{_e(k_title(label, k))}</h3>"
            f'<table class="sortable" id="leaderboard-k-{_e(label)}"><thead><tr>'
            + "".join(f"<th>{_e(h)}</th>" for h in heads)
            + "</tr></thead><tbody>"
            + "".join(body)
            + "</tbody></table>"
        )
    return "".join(out)


def _finite(value: float) -> float:
    return value if value is not None and math.isfinite(value) else -1.0


def _mechanism_table(rows: list[dict]) -> str:
    tested = [r for r in rows if not math.isnan(r.get("mech", math.nan))]
    if not tested:
        return (
            '<p class="note">No learner of these runs has its control arm at the same k (ftbench run --controls).</p>'
        )
    body = "".join(
        f"<tr><td>{_e(r['learner'])}</td><td>{_e(r['control'])}</td><td class='num'>{_e(r['k_label'])}</td>"
        f"<td class='num' data-num='{_num(r['mech'])}'>{_e(fmt_mechanism(r, with_name=False))}</td>"
        f"<td class='num' data-num='{_num(r['mech_p'])}'>{_fmt_p(r['mech_p'])}</td>"
        f"<td class='num' data-num='{_num(r['mech_p_holm'])}'>{_fmt_p(r['mech_p_holm'])}</td></tr>"
        for r in tested
    )
    return (
        '<table class="sortable" id="mechanism"><thead><tr><th>learner</th><th>control</th><th>k</th>'
        "<th>gain over control (± 95% CI)</th><th>p</th><th>p (Holm)</th></tr></thead><tbody>"
        + body
        + "</tbody></table>"
    )


def gallery_choice(rows: list[dict], records: list[dict], k: str | None, seed: int | None) -> tuple[str, int | None]:
    """The gallery's k and seed: by default the smallest k with shots (the few-shot setting)
    and the smallest seed with a cell there; a k or seed the runs lack is an error."""
    ks = list(dict.fromkeys((r["k_label"], r["k"]) for r in rows))
    labels = [label for label, _ in ks]
    if k is None:
        k = next((label for label, kk in ks if kk > 0), labels[0] if labels else "0")
    elif k not in labels:
        raise ValueError(f"--gallery-k {k} is not a k of these runs (they have k = {', '.join(labels)})")
    seeds = sorted({int(r["seed"]) for r in records if r["k_label"] in (k, "any") and r.get("replicate", 0) == 0})
    if seed is None:
        return k, seeds[0] if seeds else None
    if seed not in seeds:
        raise ValueError(
            f"--gallery-seed {seed} has no cell at k = {k} (seeds there: {', '.join(map(str, seeds)) or 'none'})"
        )
    return k, seed


def _gallery(rows: list[dict], records: list[dict], k: str, seed: int | None) -> str:
    order = {name: i for i, name in enumerate(dict.fromkeys(r["learner"] for r in rows))}
    cells = [r for r in records if r["k_label"] in (k, "any") and int(r["seed"]) == seed and r.get("replicate", 0) == 0]
    cells.sort(key=lambda r: order.get(r["learner"], len(order)))
    if not cells:
        return f'<p class="note">No cell at k = {_e(k)}, seed {_e(seed)}.</p>'
    parts = []
    by_run: dict[str, list[dict]] = defaultdict(list)
    for r in cells:
        by_run[str(r.get("run_dir", ""))].append(r)
    for run_dir, group in by_run.items():
        parts.append(_run_gallery(Path(run_dir), group, k, seed))
    return "".join(parts)


def _run_gallery(run_dir: Path, cells: list[dict], k: str, seed: int) -> str:
    failed = [r for r in cells if r["status"] != "ok"]
    ok = [r for r in cells if r["status"] == "ok"]
    stored: dict[tuple, dict[str, object]] = defaultdict(dict)
    missing = []
    for r in ok:
        path = gallery.prediction_file(run_dir, r["cell_id"])
        if path is None:
            missing.append(r)
            continue
        rows, pred = gallery.read_prediction(path)
        stored[tuple(int(x) for x in rows)][r["learner"]] = (pred, r)
    threads = next((r.get("provenance", {}).get("threads") for r in cells), None)
    out = [f"<h3>{_e(run_dir)}: k = {_e(k)}, seed {_e(seed)}</h3>"]
    if stored:
        rows_key = max(stored, key=lambda key: len(stored[key]))
        chosen = stored.pop(rows_key)
        for other in stored.values():
            missing.extend(r for _, r in other.values())
        try:
            slices = gallery.gallery_slices(run_dir, list(rows_key))
        except gallery.GalleryUnavailable as exc:
            missing.extend(r for _, r in chosen.values())
            out.append(f'<p class="warn">The gallery slices cannot be shown: {_e(exc)}.</p>')
        else:
            out.append(_gallery_figure(slices, chosen, k, seed))
    if missing:
        names = sorted({r["learner"] for r in missing}, key=[r["learner"] for r in cells].index)
        out.append(
            f"<p>No stored predictions of these slices for {_e(', '.join(names))} (recorded before the cells kept "
            "them, or collected from a grid whose workers kept them): this recomputes those cells into "
            f"<code>{_e(run_dir / gallery.RECOMPUTE_DIR)}</code>, where the next report finds them "
            "(same config, split and seed, so the same cells):</p>"
            f"<pre>{_e(gallery.recompute_command(run_dir, names, k, seed, threads))}</pre>"
        )
    if failed:
        out.append(
            '<p class="warn">Failed here (no prediction): '
            + _e(", ".join(f"{r['learner']} ({r.get('reason', r['status'])})" for r in failed))
            + "</p>"
        )
    return "".join(out)


def _gallery_figure(slices: gallery.GallerySlices, chosen: dict, k: str, seed: int) -> str:
    predictions = {name: pred for name, (pred, _) in chosen.items()}
    png = report_figures.rendered(
        prediction_gallery, slices.image, slices.truth, predictions, title=f"k = {k}, seed {seed}"
    )
    head = "<th>test row</th><th>patient</th><th>lesion %</th>" + "".join(f"<th>{_e(n)}</th>" for n in predictions)
    body = []
    for i, row in enumerate(slices.rows):
        dice = []
        for _, record in chosen.values():
            values = record.get("per_slice", {}).get("dice", [])
            v = float(values[int(row)]) if int(row) < len(values) and values[int(row)] is not None else math.nan
            dice.append(f"<td class='num'>{'—' if math.isnan(v) else f'{v:.3f}'}</td>")
        body.append(
            f"<tr><td class='num'>{int(row)}</td><td>{_e(slices.patient[i])}</td>"
            f"<td class='num'>{100 * float(slices.lesion_fraction[i]):.2f}</td>{''.join(dice)}</tr>"
        )
    return (
        _img(
            png,
            f"prediction gallery k = {k}",
            f"Slices: {slices.rule}. Rows = slices, columns = image, ground truth, each learner's prediction "
            f"(yellow; cyan = ground-truth outline). Pixels from {slices.origin}.",
        )
        + "<p class='note'>Dice of each shown slice per learner (at the scored resolution; — = no lesion):</p>"
        + f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _problems(records: list[dict], run_dirs: list[Path]) -> str:
    problems: list[Problem] = failed_cells(records) + collapsed_cells(records) + pruned_trials(run_dirs)
    if not problems:
        return '<p class="note">No failed, collapsed or pruned cells.</p>'
    body = "".join(
        f"<tr><td>{_e(p.kind)}</td><td>{_e(p.what)}</td><td>{_e(p.why)}</td>"
        f"<td>{f'<code>{_e(p.command)}</code>' if p.command else ''}</td></tr>"
        for p in problems
    )
    counts = Counter(p.kind for p in problems)
    return (
        f"<p>{_e(', '.join(f'{n} {kind}' for kind, n in sorted(counts.items())))}.</p>"
        '<table class="sortable" id="problems"><thead><tr><th>kind</th><th>cell / trial</th><th>why</th>'
        f"<th>recompute</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _curves(records: list[dict], k: str, seed: int | None) -> str:
    every = [
        p
        for r in records
        if (p := Path(str(r.get("run_dir", ""))) / "cells" / f"{r.get('cell_id', '')}.curves.csv").is_file()
    ]
    shown = [
        (r, p)
        for r in records
        if r["k_label"] in (k, "any")
        and int(r["seed"]) == seed
        and r.get("replicate", 0) == 0
        and (p := Path(str(r.get("run_dir", ""))) / "cells" / f"{r.get('cell_id', '')}.curves.csv").is_file()
    ]
    if not shown:
        return f'<p class="note">No training curves recorded at k = {_e(k)}, seed {_e(seed)} ({len(every)} in all).</p>'
    figures = "".join(
        _img(report_figures.rendered(loss_curves_plot, p), f"curves {r['cell_id']}", f"{r['cell_id']} ({p})")
        for r, p in shown
    )
    return f"<p class='note'>{len(every)} cells recorded curves (cells/*.curves.csv); shown: k = {_e(k)}, seed {_e(seed)}.</p>{figures}"


def write_report(
    run_dirs: list[Path], out_dir: Path, *, gallery_k: str | None = None, gallery_seed: int | None = None
) -> Path:
    """Write ``out_dir/report.html`` for the merged cells of ``run_dirs``; returns its path."""
    run_dirs = [Path(d) for d in run_dirs]
    check_run_dirs(run_dirs)
    records = load_records(run_dirs)  # cells from before control arms get theirs there
    if not records:
        raise ValueError(f"no finished cells in {', '.join(map(str, run_dirs))}; run `ftbench run` first")
    rows = build_rows(records, saved_shots(run_dirs))
    k, seed = gallery_choice(rows, records, gallery_k, gallery_seed)
    facts = _facts(run_dirs, records, rows)
    sections = render_sections(rows, records)
    toc = [
        ("leaderboard", "Leaderboard per k"),
        ("transfer", "Transfer gain and Dice against the labeled fraction"),
        ("seeds", "Per-seed pairs and per-slice Dice"),
        ("mechanism", "Mechanism gains (learner − own control)"),
        ("gallery", f"Prediction gallery (k = {k}, seed {seed})"),
        ("problems", "Failed, collapsed and pruned cells"),
        ("curves", "Training curves"),
    ] + ([("sections", "Further sections")] if sections else [])
    body = [
        f"<h1>ftbench report: {_e(', '.join(str(d) for d in run_dirs))}</h1>",
        '<dl class="facts">' + "".join(f"<dt>{_e(k_)}</dt><dd>{_e(v)}</dd>" for k_, v in facts.items()) + "</dl>",
        "<nav><ul>" + "".join(f'<li><a href="#{a}">{_e(t)}</a></li>' for a, t in toc) + "</ul></nav>",
        '<h2 id="leaderboard">Leaderboard per k</h2>',
        "<p class='note'>Click a column header to sort. Dice = mean over lesion-positive test slices, averaged "
        "over seeds (95% Student-t CI over seeds); gain = learner − reference paired by seed (scratch; source-only "
        "at k = 0); * = CI excludes 0; Holm = corrected over the learners of that k (gain) or over every "
        "mechanism-gain test of the run. The last column recomputes the row.</p>",
        _leaderboard_tables(rows),
        '<h2 id="transfer">Transfer gain and Dice against the labeled fraction</h2>',
        _img(
            report_figures.rendered(transfer_gain_plot, rows),
            "transfer gain",
            "One panel per learner family; bands = 95% CI over seeds; x = k with its fraction of the support pool.",
        ),
        '<h2 id="seeds">Per-seed pairs and per-slice Dice</h2>',
        _img(
            report_figures.paired_seeds(rows, records),
            "paired seeds",
            "Each learner's Dice per seed joined to the same seed's reference (same shots): the pairs the gain "
            "and its CI are computed from.",
        ),
        _img(
            report_figures.per_slice_dice(rows, records),
            "per-slice Dice",
            "Distribution of the per-slice Dice (lesion-positive test slices, all seeds pooled; cells' per_slice.dice).",
        ),
        '<h2 id="mechanism">Mechanism gains (learner − own control)</h2>',
        _img(
            report_figures.mechanism_forest(rows),
            "mechanism forest plot",
            "Learner − its own control arm (mechanism off, same stream), paired by seed, 95% CI; Holm p corrected "
            "over every mechanism-gain test of the run (leaderboard.py, _mechanism_gains).",
        ),
        _mechanism_table(rows),
        f'<h2 id="gallery">Prediction gallery (k = {_e(k)}, seed {_e(seed)})</h2>',
        _gallery(rows, records, k, seed),
        '<h2 id="problems">Failed, collapsed and pruned cells</h2>',
        _problems(records, run_dirs),
        '<h2 id="curves">Training curves</h2>',
        _curves(records, k, seed),
    ]
    if sections:
        body.append('<h2 id="sections">Further sections</h2>' + "".join(f"<pre>{_e(s)}</pre>" for s in sections))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>ftbench report: {_e(', '.join(d.name for d in run_dirs))}</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + f"\n<script>{_JS}</script>\n</body></html>\n"
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    atomic_write_text(path, page)
    return path
