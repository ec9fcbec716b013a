"""Re-scoring of the k = 1 picks: each `val` pick against the code defaults, over the episodes
of one `ftbench tune ... --enqueue PICK --enqueue DEFAULTS` study per learner.

    python scripts/one_episode_check.py results/selection/one-episode-check/epyc-avx2

Reads every ``DIR/*/study.db`` (trial 0 = the pick, trial 1 = the defaults, as enqueued) and
prints, per learner: episode 0's scores (what the one-episode study saw), the means over
episodes, and the pick − defaults difference paired over episodes with its 95 % t-CI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import optuna
from scipy import stats


def episodes(db: Path) -> tuple[list[float], list[float]]:
    """(pick, defaults) per-episode validation Dice of the study in ``db``."""
    url = f"sqlite:///{db}"
    (summary,) = optuna.get_all_study_summaries(url)
    trials = optuna.load_study(study_name=summary.study_name, storage=url).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) != 2:
        raise SystemExit(f"{db}: {len(done)} complete trials, expected 2 (pick, defaults); rerun its tune command")
    pick, defaults = sorted(done, key=lambda t: t.number)
    return list(pick.user_attrs["episode_dice"]), list(defaults.user_attrs["episode_dice"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        "| learner, k = 1 | episode 0: pick / defaults | mean of episodes: pick / defaults | pick − defaults, paired [95% CI] | n |"
    )
    print("|---|---|---|---|---|")
    for db in sorted(args.dir.glob("*/study.db")):
        a, b = (np.array(x) for x in episodes(db))
        d = a - b
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        print(
            f"| {db.parent.name.removesuffix('-k1')} | {a[0]:.3f} / {b[0]:.3f} | {a.mean():.3f} / {b.mean():.3f} "
            f"| {d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}] | {len(d)} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
