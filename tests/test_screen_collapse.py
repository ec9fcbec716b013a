"""fewshot_transfer/experiments/screen_collapse.py: grid parsing and the collapse rule (the adversary's doing only)."""

from __future__ import annotations

import pytest

from fewshot_transfer.experiments import screen_collapse as screen


def test_axes_keep_phantom_specs_whole_and_quote_strings():
    key, values = screen.parse_axis("data.source=phantom:covid?seed=1000&lesion_size=0.5|phantom:covid")
    assert key == "data.source" and values == ["phantom:covid?seed=1000&lesion_size=0.5", "phantom:covid"]
    assert screen.quoted("data.source", values[0]) == "data.source='phantom:covid?seed=1000&lesion_size=0.5'"
    assert screen.quoted("learners.adaptseg.lambda_adv", "0.1") == "learners.adaptseg.lambda_adv=0.1"
    with pytest.raises(SystemExit, match="KEY=V1"):
        screen.parse_axis("lambda")
    points = screen.grid_points([("a", ["1", "2"]), ("learners.adaptseg.d_depth", ["2", "4"])])
    assert len(points) == 4 and points[1] == {"a": "1", "learners.adaptseg.d_depth": "4"}


def _rows(point: str, name: str, pred_true: float) -> list[dict]:
    return [{"point": point, "seed": s, "learner": name, "dice": 0.5, "pred_true": pred_true} for s in (0, 1)]


@pytest.mark.parametrize(
    ("learner", "control", "source_only", "collapses"),
    [
        (0.1, 1.0, 0.9, True),  # the adversary erased the lesions
        (0.1, 0.1, 0.9, False),  # the control collapses too: continued source training did it
        (0.1, 1.0, 0.3, False),  # the source model never saw the target lesions
        (0.5, 1.0, 0.9, False),  # shrunk, not collapsed
    ],
)
def test_a_point_collapses_only_when_the_adversary_is_the_cause(learner, control, source_only, collapses):
    key = "learners.adaptseg."
    point = {"data.target": "t", f"{key}lambda_adv": "1"}
    rows = _rows("data.target=t learners.adaptseg.lambda_adv=1", "adaptseg", learner)
    rows += _rows("data.target=t", "adaptseg-control", control) + _rows("data.target=t", "source-only", source_only)
    (row,) = screen.summarize([point], rows, "adaptseg", "adaptseg-control", key)
    assert row["collapses"] is collapses
    assert row["adaptseg pred/true"] == pytest.approx(learner)
