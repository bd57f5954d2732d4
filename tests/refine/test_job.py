"""The job skeleton: start, iterate until done, final files and job.json in that order; a second
run into the same folder is refused; --continue resumes after the last saved iteration."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest

from subtomo.errors import InputError
from subtomo.refine import outputs
from subtomo.refine.job import Job, JobOptions, JobState, JobSteps, SavedState, run_job


@dataclass
class CountOptions(JobOptions):
    n_iter: int = 3


@dataclass
class CountState(SavedState):
    iteration: int
    history: list[dict]


class Counting(JobSteps[CountOptions, JobState]):
    """Records every step; iteration i appends i to the history and saves its state."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _state(self, iteration: int, history: list[dict]) -> JobState:
        return JobState(iteration=iteration, particles=None, poses=None, sigma2=np.zeros(1),
                        maps=[], distribution=np.ones(1), history=history)

    def start(self, job: Job[CountOptions], ps) -> JobState:
        self.calls.append("start")
        return self._state(0, [])

    def resume(self, job: Job[CountOptions], ps, saved: Path) -> JobState:
        state = CountState.load(saved)
        self.calls.append(f"resume {state.iteration}")
        return self._state(state.iteration, state.history)

    def done(self, job: Job[CountOptions], state: JobState) -> bool:
        return state.iteration >= job.options.n_iter

    def iterate(self, job: Job[CountOptions], state: JobState) -> None:
        self.calls.append(f"iteration {state.iteration}")
        state.history.append({"iteration": state.iteration})
        CountState(state.iteration, state.history).save(
            outputs.state_path(job.out, state.iteration))

    def write_final(self, job: Job[CountOptions], state: JobState) -> None:
        self.calls.append("final")

    def summary(self, state: JobState) -> dict:
        return {"converged": True}


def _job(out: Path, n_iter: int, continue_from: bool = False) -> Job[CountOptions]:
    return Job(out, CountOptions(n_iter=n_iter), 8, 1.0, 6.4, None, np.ones(2),
               continue_from=continue_from, progress=False)


def test_run_job_starts_iterates_finishes_and_resumes(tmp_path, capsys):
    out = tmp_path / "job"
    steps = Counting()
    state = run_job(_job(out, 3), steps, None)
    assert steps.calls == ["start", "iteration 1", "iteration 2", "iteration 3", "final"]
    assert state.iteration == 3
    job_json = json.loads((out / "job.json").read_text())
    assert job_json["iterations"] == 3 and job_json["converged"] is True
    assert job_json["history"] == [{"iteration": i} for i in (1, 2, 3)]
    assert job_json["parameters"] == asdict(CountOptions(n_iter=3))

    with pytest.raises(InputError, match="previous run"):  # nothing is overwritten
        run_job(_job(out, 5), Counting(), None)

    steps = Counting()
    state = run_job(_job(out, 5, continue_from=True), steps, None)
    assert steps.calls == ["resume 3", "iteration 4", "iteration 5", "final"]
    assert state.history == [{"iteration": i} for i in range(1, 6)]
    assert f"Continuing {out} after iteration 3." in capsys.readouterr().out
    assert json.loads((out / "job.json").read_text())["iterations"] == 5


def test_continue_without_a_finished_iteration_names_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no finished iteration"):
        run_job(_job(tmp_path / "empty", 2, continue_from=True), Counting(), None)
