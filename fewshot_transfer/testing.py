"""The checks every learner must pass, for the registry-wide tests and for plugin authors.

    from fewshot_transfer.testing import check_learner
    check_learner("entropy-min")          # a registered name, or the class itself

:func:`check_learner` trains the learner on a tiny phantom benchmark (32 px, a base-4 U-Net,
5 steps: seconds on one CPU core, one torch thread, so every comparison is exact) and
raises :class:`LearnerCheckError` (an ``AssertionError``) naming the first check that fails:

1. **smoke fits** at the smallest k the learner supports (k = 1; k = 0 only for a
   k-independent learner) and at k = 0 where it declares ``supports_k0``: ``fit`` returns a
   :class:`~fewshot_transfer.training.Segmenter` whose test-set probabilities are finite and
   in [0, 1], and a learner that ran target-side training steps (``ctx.budget``, cached source
   pretraining aside) ends at other weights
   than both starting points it could have kept (a fresh backbone, the source-pretrained one);
2. **its control arm**, when it declares ``control = Control(off, same_as)``
   (``learners/base.py``): the ``NAME-control`` row takes the learner's own parameters with
   ``off`` applied; with ``same_as`` (and the parameters the two share set equal, the case the
   leaderboard serves with ``same_as``'s row) the control's trained weights equal ``same_as``'s
   bit for bit, every tensor of the state dict, and so do their target-phase loss curves;
3. **non-vacuity**: at every k of the smoke fits the learner with its mechanism on ends at
   other weights than its control: the mechanism does something.

The check runs at :data:`CHECK_PARAMS` where the learner has those hyperparameters (a
2-step meta-training, a 2-step discriminator warm-up, pseudo-labels and confidence-routed
discriminators trusting pixels from 0.6: a 5-step model is confident nowhere near 0.9), plus
``params``; a mechanism that is still off in such a short run needs ``params`` that switch it
on (say, a shorter warm-up). The non-vacuity check is what says so.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewshot_transfer import learners
from fewshot_transfer.config import resolve_config
from fewshot_transfer.harness.benchmark import Benchmark
from fewshot_transfer.harness.planning import as_config, with_tables
from fewshot_transfer.harness.rundir import open_run
from fewshot_transfer.harness.runner import PRETRAIN_PHASE
from fewshot_transfer.learners.base import Learner
from fewshot_transfer.learners.controls import SUFFIX, control_row

#: ``--set`` overrides that shrink the default benchmark to seconds (the tests' tiny config).
TINY = (
    "data.size=32",
    "model.base=4",
    "model.depth=3",
    "train.steps=5",
    "train.pretrain_steps=5",
    "train.batch_size=4",
    "data.phantom.source_patients=6",
    "data.phantom.target_patients=10",
    "data.phantom.slices_per_patient=6",
)
#: Hyperparameters the check sets where a learner has them, so that every built-in mechanism
#: is live (and cheap) in a 5-step run.
CHECK_PARAMS: dict[str, Any] = {
    "meta_steps": 2,
    "meta_batch": 2,
    "n_val_tasks": 2,
    "d_warmup": 2,
    "warmup_share": 0.25,
    "confidence": 0.6,
    "conf_threshold": 0.6,
}
#: The episode every fit of a check uses.
SEED = 0


class LearnerCheckError(AssertionError):
    """A learner failed one of :func:`check_learner`'s checks; the message names it."""


def registered(family: str | None = None) -> list[str]:
    """The registered learners (built-ins, entry points, plugins loaded so far), control rows
    aside, in ``available()`` order; only those of ``family`` when given. Tests parametrize
    over this instead of typing names."""
    return [name for name in learners.available() if family is None or learners.get(name).family == family]


def tiny_config(overrides: tuple[str, ...] | list[str] = ()) -> dict:
    """The default config shrunk by :data:`TINY`, shots 0 and 1 (and ``overrides``, ``--set`` style)."""
    return resolve_config(None, [*TINY, "run.shots='0,1'", *overrides])


@dataclasses.dataclass
class Fit:
    """One trained learner: its weights, test-set probabilities and context."""

    weights: dict[str, torch.Tensor]
    proba: np.ndarray
    ctx: Any

    def same_weights(self, other: Fit) -> bool:
        return _same(self.weights, other.weights)

    def target_curves(self) -> list[dict]:
        return [r for r in self.ctx.curves.rows if r["phase"] == "target"]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


class Checker:
    """Runs :func:`check_learner` on one benchmark, reusing fits across learners (scratch and
    finetune serve many controls). ``bench`` defaults to a tiny benchmark in ``work_dir`` (a
    temporary folder when none is given) with its own data and model cache."""

    def __init__(self, bench: Benchmark | None = None, *, work_dir: Path | str | None = None) -> None:
        if bench is None:
            root = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="ftbench-check-"))
            cfg = tiny_config([f'data.cache_dir="{root / "cache"}"'])
            bench = open_run(cfg, root / "bench", threads=0, check=False, write_config=False)  # threads: the caller's
        self.bench = bench
        self._fits: dict[tuple[str, int, str], Fit] = {}

    def config_for(self, name: str, params: dict[str, Any]) -> dict:
        """The benchmark's config with ``[learners.NAME]`` updated by ``params``."""
        config = as_config(self.bench.plan)
        table = {**config.get("learners", {}).get(name, {}), **params}
        return {**config, "learners": {**config.get("learners", {}), name: table}}

    def fit(self, name: str, k: int, config: dict) -> Fit:
        """``name`` trained at (k, :data:`SEED`) under ``config``, once per resolved parameters."""
        cls = learners.get(name)
        bench = dataclasses.replace(self.bench, plan=with_tables(self.bench.plan, config["learners"]))
        ctx = bench.context(cls, k, SEED)
        key = (name, k, json.dumps(dict(ctx.params), sort_keys=True, default=str))
        if key not in self._fits:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # reductions in one order: equal weights are bit-equal
            try:
                torch.manual_seed(SEED)
                segmenter = cls().fit(ctx)
                proba = segmenter.predict_proba(bench.test_set.images)
            except Exception as exc:
                raise LearnerCheckError(f"{name} at k = {k}: fit failed: {type(exc).__name__}: {exc}") from exc
            finally:
                torch.set_num_threads(threads)
            self._fits[key] = Fit(_state(segmenter.model), proba, ctx)
        return self._fits[key]

    def check(self, learner: str | type[Learner], params: dict[str, Any] | None = None) -> list[str]:
        """Every check of :func:`check_learner` on ``learner``; returns what was checked."""
        cls = learners.get(learner) if isinstance(learner, str) else learner
        name = cls.name
        if learners.get(name) is not cls:
            raise LearnerCheckError(
                f"{cls.__name__} is not the learner registered as {name!r}; decorate it with @register"
            )
        own = {key: value for key, value in CHECK_PARAMS.items() if key in cls.defaults}
        config = self.config_for(name, {**own, **(params or {})})
        done: list[str] = []
        ks = [0] if cls.k_independent else [1] + ([0] if cls.supports_k0 else [])
        fits = {k: self._smoke(cls, k, config) for k in ks}
        done += [f"{name}: fit at k = {k}, finite predictions" for k in ks]
        spec = cls.control
        if spec is None or cls.control_of:
            return done
        control = f"{name}{SUFFIX}"
        cparams = dict(learners.get(control).resolve_params(config))
        mine = dict(cls.resolve_params(config))
        wrong = {key: cparams[key] for key, value in spec.off.items() if cparams.get(key) != value}
        wrong |= {
            key: cparams[key] for key in mine if key not in spec.off and key in cparams and cparams[key] != mine[key]
        }
        if wrong:
            raise LearnerCheckError(f"{control} does not take {name}'s parameters with {spec.off} off: {wrong}")
        for k, fit in fits.items():
            if fit.same_weights(self.fit(control, k, config)):
                raise LearnerCheckError(
                    f"{name} at k = {k}: the mechanism changes nothing: the learner ends at its control's "
                    f"weights ({control}, {spec.off or 'the same_as initialisation'}); switch it on with params"
                )
            done.append(f"{name}: mechanism on != {control} at k = {k}")
        if spec.same_as:
            done.append(self._identity(cls, config))
        return done

    def _smoke(self, cls: type[Learner], k: int, config: dict) -> Fit:
        fit = self.fit(cls.name, k, config)
        where = f"{cls.name} at k = {k}"
        if not np.isfinite(fit.proba).all() or fit.proba.min() < 0 or fit.proba.max() > 1:
            raise LearnerCheckError(f"{where}: predictions are not finite probabilities in [0, 1]")
        if fit.proba.shape != self.bench.test_set.images.shape:
            raise LearnerCheckError(
                f"{where}: predictions of shape {fit.proba.shape} for test images {self.bench.test_set.images.shape}"
            )
        if any(b.get("steps") for phase, b in fit.ctx.budget.items() if phase != PRETRAIN_PHASE):
            starts = {"a fresh backbone": fit.ctx.new_model()}
            if cls.uses_source:
                starts["the source-pretrained backbone"] = fit.ctx.source_model()
            for what, model in starts.items():
                if _same(fit.weights, _state(model)):
                    raise LearnerCheckError(f"{where}: it ran training steps but ends at {what}'s weights")
        return fit

    def _identity(self, cls: type[Learner], config: dict) -> str:
        """``NAME-control`` computes exactly ``same_as`` when the parameters they share agree."""
        name, other = cls.name, learners.get(cls.control.same_as)
        theirs = other.resolve_params(config)
        shared = {key: value for key, value in theirs.items() if key in cls.resolve_params(config)}
        aligned = self.config_for(name, {**config["learners"].get(name, {}), **shared})
        both_k0 = cls.supports_k0 and (other.supports_k0 or other.k_independent)
        k = 0 if both_k0 else 1
        row = control_row(name, k, aligned)
        if row != other.name:
            raise LearnerCheckError(
                f"{name} declares same_as={other.name!r}, but with the parameters they share equal its control row "
                f"at k = {k} is {row!r}"
            )
        control, reference = self.fit(f"{name}{SUFFIX}", k, aligned), self.fit(other.name, k, aligned)
        if not control.same_weights(reference):
            differ = [n for n in reference.weights if not torch.equal(control.weights[n], reference.weights[n])]
            raise LearnerCheckError(
                f"{name}{SUFFIX} is not {other.name} bit for bit at k = {k}: {len(differ)} tensors differ "
                f"(first {differ[0]})"
            )
        if control.target_curves() != reference.target_curves():
            raise LearnerCheckError(f"{name}{SUFFIX} and {other.name} have the same weights but other loss curves")
        return f"{name}: {name}{SUFFIX} == {other.name} bit for bit at k = {k}"


def check_learner(
    learner: str | type[Learner],
    *,
    params: dict[str, Any] | None = None,
    bench: Benchmark | None = None,
    work_dir: Path | str | None = None,
) -> list[str]:
    """Check one learner (see the module doc): smoke fits, its control's identity, non-vacuity.

    ``learner`` is a registered name or class (a plugin: import it first, e.g. with
    ``fewshot_transfer.learners.load_plugins``). ``params`` are hyperparameters for the check
    (``[learners.NAME]``); ``bench`` a prepared benchmark to reuse, else a tiny one is built in
    ``work_dir`` (default: a temporary folder). Returns the list of what was checked; raises
    :class:`LearnerCheckError` on the first failure."""
    return Checker(bench, work_dir=work_dir).check(learner, params)
