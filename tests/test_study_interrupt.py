"""Ctrl-C in a study: `StudyInterrupted` (still a KeyboardInterrupt) says how many points the
run directory keeps, and running again resumes from there."""

import pytest

from prunelab.study.recipe import parse_recipe
from prunelab.study.runner import StudyInterrupted, run_study
from prunelab.study.testing import FakeBackend

RECIPE = {"name": "stop", "models": ["m"], "tasks": ["digits"],
          "compressions": [{"method": "magnitude", "sparsity": [0.3, 0.6]}],
          "eval": {"limit": 10}}


class InterruptedBackend(FakeBackend):
    """Presses Ctrl-C while evaluating the `stop_at`-th point."""

    def __init__(self, stop_at: int):
        super().__init__()
        self.stop_at, self.evaluated = stop_at, 0

    def evaluate(self, handle, task, limit, seed, batch_size):
        self.evaluated += 1
        if self.evaluated == self.stop_at:
            raise KeyboardInterrupt
        return super().evaluate(handle, task, limit, seed, batch_size)


def test_an_interrupted_study_says_how_many_points_it_kept_and_resumes(tmp_path):
    recipe = parse_recipe(RECIPE)
    with pytest.raises(StudyInterrupted) as caught:
        run_study(recipe, tmp_path, backend=InterruptedBackend(stop_at=6), progress=False)
    assert isinstance(caught.value, KeyboardInterrupt)
    assert caught.value.points_kept == 5
    assert "5 points kept" in str(caught.value) and "rerun to resume" in str(caught.value)

    # A second interruption counts the points of both runs.
    with pytest.raises(StudyInterrupted) as again:
        run_study(recipe, tmp_path, backend=InterruptedBackend(stop_at=3), progress=False)
    assert again.value.points_kept == 7

    out = run_study(recipe, tmp_path, backend=FakeBackend(), progress=False)
    assert (out.points_done_before, out.points_run, out.points_total) == (7, 5, 12)


def test_an_interrupt_before_any_point_keeps_none(tmp_path):
    class StopAtOnce(FakeBackend):
        def describe_tasks(self, selectors):
            raise KeyboardInterrupt

    with pytest.raises(StudyInterrupted) as caught:
        run_study(parse_recipe(RECIPE), tmp_path / "new", backend=StopAtOnce(), progress=False)
    assert caught.value.points_kept == 0
