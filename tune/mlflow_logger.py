"""MLflow for a Tune search: the search is a parent run, each trial a child run.

Written by the driver from a Tune callback: one writer, so a sqlite tracking store is never
written by many processes at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import ray.tune


def stop_reason(result: dict[str, Any], max_t: int, time_attr: str) -> str:
    """Why a trial ended: its own early stopping, the cap on `time_attr`, else the scheduler."""
    if not result:
        return "no result"
    if result.get("early_stopped"):
        return "early_stopping"
    if result.get(time_attr, 0) >= max_t:
        return f"max_{time_attr}"
    return "asha"


class MlflowSearchLogger(ray.tune.Callback):
    """Parent run = the search; one child run per trial. Runs in the driver only (one writer).

    A child gets the trial's `params` from its config, every reported `metrics` value stepped by
    `time_attr`, and at the end `<time_attr>_run`, `best_<first metric>` (per `mode`), `best_round`
    when reported, and a `stopped_by` tag. Generic over the model: the note-model search uses it
    with its own params, metrics and time attribute.

    Pickled with the experiment (Tune keeps its callbacks for `Tuner.restore`), so it holds ids
    only; a restored trial finds its existing child run by tag instead of making a second one.
    """

    def __init__(
        self,
        experiment_id: str,
        parent_run_id: str,
        search_name: str,
        max_t: int,
        params: Sequence[str],
        metrics: Sequence[str],
        time_attr: str,
        mode: str = "max",
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.search_name = search_name
        self.max_t = max_t
        self.params, self.metrics = tuple(params), tuple(metrics)
        self.time_attr, self.mode = time_attr, mode
        self._runs: dict[str, str] = {}
        self._best: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runs": {}, "_best": {}}

    @staticmethod
    def _client() -> Any:
        from mlflow import MlflowClient

        from ml import registry

        registry.configure()
        return MlflowClient()

    def _child(self, trial: Any) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        from mlflow.entities import Param

        client = self._client()
        found = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' "
            f"AND tags.tune_trial_id = '{trial.trial_id}'",
            max_results=1,
        )
        if found:  # a restored trial: same child run
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(
                self.experiment_id,
                run_name=f"trial-{trial.trial_id}",
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    "tune_trial_id": trial.trial_id,
                    "tune_experiment": self.search_name,
                    "kind": "tune-trial",
                },
            )
            run_id = run.info.run_id
            client.log_batch(run_id, params=[Param(k, str(trial.config.get(k))) for k in self.params])
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._child(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric

        step, now = int(result.get(self.time_attr, 0)), int(time.time() * 1000)
        values = {k: result.get(k) for k in self.metrics}
        first = values.get(self.metrics[0])
        if finite(first):
            best = self._best.get(trial.trial_id)
            better = best is None or (first > best if self.mode == "max" else first < best)
            self._best[trial.trial_id] = float(first) if better else best  # type: ignore[assignment]
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if finite(v)]
        self._client().log_batch(self._child(trial), metrics=metrics)

    def _finish(self, trial: Any, status: str) -> None:
        from mlflow.entities import Metric, RunTag

        client = self._client()
        run_id = self._child(trial)
        result = trial.last_result or {}
        now = int(time.time() * 1000)
        finals = {f"{self.time_attr}_run": result.get(self.time_attr, 0)}
        if trial.trial_id in self._best:
            finals[f"best_{self.metrics[0]}"] = self._best[trial.trial_id]
        if "best_round" in result:
            finals["best_round"] = result["best_round"]
        reason = "error" if status == "FAILED" else stop_reason(result, self.max_t, self.time_attr)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in finals.items() if finite(v)],
            tags=[RunTag("stopped_by", reason)],
        )
        client.set_terminated(run_id, status)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FAILED")


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
