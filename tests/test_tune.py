"""Ray Tune search of the XGBoost model: ASHA stops weak trials, MLflow gets a parent run with a child
per trial, the best configuration is registered with its provenance, and an interrupted search
resumes without redoing finished trials. Both searches as `ray job submit` jobs on a two-node
cluster (`--max-concurrent 2`, features on S3) are in tests/test_cluster.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray.tune

pytestmark = pytest.mark.slow

# Small and fast: 40 rounds at most, a report (and checkpoint) every 10, ASHA rungs at 10 and 20.
FAST = {
    "max_rounds": 40,
    "report_every": 10,
    "checkpoint_every": 10,
    "grace_period": 10,
    "reduction_factor": 2,
    "n_boot": 50,
}


def _no_split_point() -> dict:
    """A configuration whose trees cannot split (min_child_weight above the data's total hessian):
    every prediction is the same, so its validation AUROC is exactly 0.5."""
    from tune.xgboost_search import default_point

    return {**default_point(), "min_child_weight": 1e9}


@pytest.fixture(scope="module")
def tune_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private data dir: the sqlite MLflow db, its artifacts and the Tune experiments."""
    home = tmp_path_factory.mktemp("tune-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDISCALE_DATA_DIR", str(home))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home


@pytest.fixture(scope="module")
def searched(ray_cluster: object, synthetic_features: Path, tune_home: Path) -> dict:
    """A 4-trial search run one trial at a time, so ASHA's decisions do not depend on timing: the
    default configuration reaches the 10-round rung first, and the no-split trial after it is below
    the rung's cut-off (the median of the two) and must be stopped there."""
    import data.featureset
    import data.storage
    from tune.xgboost_search import SearchConfig, tune_xgboost

    config = SearchConfig(
        features=str(synthetic_features),
        name="tiny",
        num_samples=4,
        max_concurrent=1,
        points=[_no_split_point()],
        **FAST,
    )
    resolves: list[str] = []  # every path turned into a filesystem Location during the search
    original = data.storage.resolve

    def counting(uri: str | Path, settings: object = None) -> data.storage.Location:
        resolves.append(str(uri))
        return original(uri, settings)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data.storage, "resolve", counting)
        patch.setattr(data.featureset, "resolve", counting)
        result = tune_xgboost(config)
    return {**result, "resolves": resolves}


def test_one_search_opens_its_feature_folder_once(searched: dict, synthetic_features: Path) -> None:
    """The trials' data, the retrain, its test evaluation and its drift reference all read the
    FeatureFolder the search opened (before: 21 resolves and 4 verifications of the same path)."""
    assert searched["resolves"] == [str(synthetic_features)]


def test_asha_stops_weak_trials_and_the_best_is_registered(searched: dict) -> None:
    assert searched["trials"] == 4 and searched["trials_errored"] == 0
    rows = {row["trial_id"]: row for row in searched["top"]}
    assert len(rows) == 4
    no_split = next(r for r in rows.values() if r["min_child_weight"] == 1e9)
    assert no_split["valid_auroc"] == pytest.approx(0.5)
    assert no_split["stopped_by"] == "asha" and no_split["rounds_run"] == 10
    assert searched["rounds_run"] < 4 * FAST["max_rounds"]
    assert 0 < searched["rounds_fraction_run"] < 1
    assert all(r["rounds_run"] % 10 == 0 or r["stopped_by"] == "early_stopping" for r in rows.values())
    # the best is the top row, beats chance, and its retrained model is registered (the model's first
    # version in this registry: champion and challenger, approval "bootstrap"; later ones are pending)
    assert searched["best_trial_id"] == searched["top"][0]["trial_id"]
    assert searched["best_valid_auroc"] == max(r["valid_auroc"] for r in rows.values()) > 0.6
    assert set(searched["best_params"]) >= {"learning_rate", "max_depth", "scale_pos_weight"}
    assert 1 <= searched["best_round"] <= FAST["max_rounds"]
    assert searched["registered_version"] == "1" and "challenger" in searched["registered"]["aliases"]
    assert searched["registered"]["approval"] == "bootstrap"
    assert searched["test_auroc"] > 0.55


def test_mlflow_parent_run_child_per_trial_and_version_provenance(searched: dict) -> None:
    from mlflow import MlflowClient

    from ml import registry

    registry.configure()
    client = MlflowClient()
    parent = client.get_run(searched["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["tune_experiment"] == "tiny"
    assert parent.data.metrics["best_valid_auroc"] == pytest.approx(searched["best_valid_auroc"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    trials = [r for r in children if r.data.tags.get("kind") == "tune-trial"]
    assert sorted(r.data.tags["tune_trial_id"] for r in trials) == sorted(
        t["trial_id"] for t in searched["top"]
    )
    assert all(r.info.status == "FINISHED" for r in trials)
    for run in trials:
        assert {"learning_rate", "max_depth", "max_rounds"} <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "valid_auroc")
        assert min(m.step for m in history) == 10  # one point per report, stepped by boosting round
        assert run.data.metrics["rounds_run"] == max(m.step for m in history)
    retrain = [r for r in children if r.data.tags.get("kind") == "tune-retrain"]
    assert [r.info.run_id for r in retrain] == [searched["retrain_run_id"]]

    version = client.get_model_version("readmission-tabular", searched["registered_version"])
    assert version.run_id == searched["retrain_run_id"]
    assert version.tags["tune_experiment"] == "tiny"
    assert version.tags["tune_parent_run_id"] == searched["parent_run_id"]
    assert version.tags["tune_trial_id"] == searched["best_trial_id"]
    assert version.tags["tune_num_trials"] == "4"


class InterruptOnce(ray.tune.Callback):
    """Presses Ctrl+C (SIGUSR1, which Tune handles the same way) once, when `after` trials have
    finished. Tune pickles callbacks with the experiment and restores them on resume, so the
    once-only memory is a file (one line per finished trial), not an attribute."""

    def __init__(self, marker: Path, after: int = 1):
        self.marker = str(marker)
        self.after = after

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        seen = Path(self.marker).read_text().split() if os.path.exists(self.marker) else []
        if len(seen) < self.after:
            Path(self.marker).write_text("\n".join([*seen, trial.trial_id]))
            if len(seen) + 1 == self.after:
                os.kill(os.getpid(), signal.SIGUSR1)


def _result_lines(experiment: Path) -> dict[str, int]:
    """Trial id -> number of results in its result.json (grows if a trial runs again)."""
    return {
        d.name.removeprefix("trial_"): len((d / "result.json").read_text().splitlines())
        for d in experiment.glob("trial_*")
        if (d / "result.json").exists()
    }


def test_interrupted_search_resumes_without_redoing_finished_trials(
    ray_cluster: object, synthetic_features: Path, tune_home: Path, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from tune.xgboost_search import SearchConfig, SearchInterrupted, run_search

    config = SearchConfig(features=str(synthetic_features), name="resumable", num_samples=3, max_concurrent=1,
                          **FAST)  # fmt: skip
    marker = tmp_path / "interrupted"
    with pytest.raises(SearchInterrupted, match="--resume --name resumable"):
        run_search(config, callbacks=[InterruptOnce(marker)])
    experiment = tune_home / "tune" / "resumable"
    first = marker.read_text().strip()
    before = _result_lines(experiment)
    assert first in before

    outcome = run_search(resume_name="resumable")
    assert outcome.resumed and len(outcome.trials) == 3 and not outcome.trials["error"].any()
    after = _result_lines(experiment)
    assert after[first] == before[first]  # the finished trial did not run again
    assert len(after) == 3

    client = MlflowClient()
    children = client.search_runs(
        [outcome.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'"
    )
    assert sorted(r.data.tags["tune_trial_id"] for r in children) == sorted(outcome.trials["trial_id"])
    assert all(r.info.status == "FINISHED" for r in children)


# --------------------------------------------------------------------------- note-model search

# Tiny BERT, 6 optimizer steps, a report every 3: one ASHA rung at step 3.
TEXT_FAST = {
    "sample": 160,
    "max_steps": 6,
    "eval_every": 3,
    "max_length": 64,
    "head_tokens": 16,
    "n_boot": 20,
}
# AdamW at lr 1, no warm-up: validation loss far above the default's (which, 3 steps at lr 5e-5
# into a random model, is chance: ~0.69). Every searched key is set, so the trial does not depend
# on the search space's sampler.
DIVERGING = {"learning_rate": 1.0, "batch_size": 32, "warmup_ratio": 0.0, "weight_decay": 0.0}
SEARCH_BERT_SEED = 0
# The first text-search test that runs also sets up `text_searched` (3 BERT trials, an interrupt and
# a resume, the best trial retrained and evaluated): 109-121 s of setup in whole-suite CI runs. Run
# alone, it also pays for the synthetic features and `searched` (tabular): 371 s measured on a
# loaded 2-core machine (load average 7-9). Whichever of the three runs first pays, so each gets
# 600 s.
TEXT_SEARCH_TIMEOUT = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def search_bert(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_bert`'s architecture and tokenizer with weights drawn from a fixed seed.

    Whether ASHA stops the diverging trial depends on its loss at the rung being above the
    default trial's, and that depends on the initial weights: on this task (10% positives) a
    diverged model can collapse onto the majority class with a loss of 0.34-0.66, below chance
    (0.69). A copy of the training loop found that for 2 of 60 random initializations; with one
    of them the search ran the diverging trial to step 6, as seen once in a full run. The
    session's `tiny_bert` takes its weights from torch's global generator, i.e. from whatever ran
    before it in the session, so the search trains its own seeded copy: the same weights in a
    full run as alone, the same trials, the same ASHA decisions (at the rung: 3.19 against 0.69)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("search-bert")
    with torch.random.fork_rng(devices=[]):  # leaves the global generator as it was
        torch.manual_seed(SEARCH_BERT_SEED)
        BertForSequenceClassification(AutoConfig.from_pretrained(tiny_bert)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    return folder


def _losses_by_step(experiment: Path) -> dict[str, dict[int, float]]:
    """Trial id -> {step: valid_loss} from its result.json (every report Tune received)."""
    out: dict[str, dict[int, float]] = {}
    for d in experiment.glob("trial_*"):
        lines = (d / "result.json").read_text().splitlines() if (d / "result.json").exists() else []
        results = [json.loads(line) for line in lines if line.strip()]
        out[d.name.removeprefix("trial_")] = {int(r["step"]): r["valid_loss"] for r in results if "step" in r}
    return out


@pytest.fixture(scope="module")
def text_searched(
    ray_cluster: object, synthetic_features: Path, search_bert: Path, tune_home: Path,
    searched: dict, tmp_path_factory: pytest.TempPathFactory,
) -> dict:  # fmt: skip
    """3 trials one at a time: the default, a diverging one (ASHA must stop it at step 3), a random
    one. The search is interrupted after the second trial and resumed, so the resumed search must
    start a trial after an ASHA stop: before the orphan reaper, that trial waited for ever for
    the CPU still held by the stopped trial's Train workers. One at a time, ASHA's decision does
    not depend on timing: the default trial's step-3 result is in the rung before the diverging
    trial starts, and with one value in the rung the cut-off is that value. After `searched`,
    which registers the tabular champion the note model's combiner is fitted against, also when
    these tests run without the tabular ones."""
    from tune.text_search import TextSearchConfig, run_text_search
    from tune.xgboost_search import SearchInterrupted

    search = TextSearchConfig(
        task="readmission", name="notes", features=str(synthetic_features), num_samples=3,
        max_concurrent=1, points=[DIVERGING], model=str(search_bert), **TEXT_FAST,
    )  # fmt: skip
    marker = tmp_path_factory.mktemp("interrupt") / "finished"
    with pytest.raises(SearchInterrupted, match="--resume --name notes"):
        run_text_search(search, callbacks=[InterruptOnce(marker, after=2)])
    before = _result_lines(tune_home / "tune" / "notes")
    out = run_text_search(resume_name="notes")
    return {**out, "finished_before": marker.read_text().split(), "lines_before": before}


@TEXT_SEARCH_TIMEOUT
def test_text_search_stops_the_diverging_trial_and_resumes(text_searched: dict, tune_home: Path) -> None:
    rows = {row["trial_id"]: row for row in text_searched["top"]}
    assert text_searched["trials"] == 3 and len(rows) == 3 and not any(r["error"] for r in rows.values())
    diverging = next(r for r in rows.values() if r["learning_rate"] == DIVERGING["learning_rate"])
    default = next(r for r in rows.values() if r["learning_rate"] == 5e-5)
    losses = _losses_by_step(tune_home / "tune" / "notes")
    # the premise: at the rung the diverging trial is worse than the default (the only value there)
    assert losses[diverging["trial_id"]][3] > losses[default["trial_id"]][3], losses
    assert diverging["steps"] == 3 and default["steps"] == 6, losses  # stopped at the rung / ran to max_t
    assert sorted(losses[diverging["trial_id"]]) == [3] and sorted(losses[default["trial_id"]]) == [3, 6]
    assert diverging["valid_loss"] > default["valid_loss"]
    assert text_searched["best"]["trial_id"] != diverging["trial_id"]
    assert text_searched["steps_fraction_run"] < 1
    # the two trials finished before the interrupt did not run again after the resume
    after = _result_lines(tune_home / "tune" / "notes")
    assert len(text_searched["finished_before"]) == 2 and len(after) == 3
    assert all(after[t] == text_searched["lines_before"][t] for t in text_searched["finished_before"])


@TEXT_SEARCH_TIMEOUT
def test_text_search_leaves_no_cpus_held_by_stopped_trials(text_searched: dict) -> None:
    from tune.text_search import orphaned_train_groups

    assert orphaned_train_groups() == []
    deadline = time.monotonic() + 30  # trial actors exit asynchronously
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.5)


@TEXT_SEARCH_TIMEOUT
def test_text_search_registers_the_best_trial_with_provenance(text_searched: dict) -> None:
    from mlflow import MlflowClient

    from ml import registry

    registry.configure()
    client = MlflowClient()
    registered = text_searched["registered"]
    # a first version bootstraps champion and challenger; any later one waits for `ml registry approve`
    if registered["version"] == "1":
        assert "challenger" in registered["aliases"] and registered["approval"] == "bootstrap"
    else:
        assert registered["aliases"] == [] and registered["approval"] == "pending"
    version = client.get_model_version("readmission-notes", registered["version"])
    assert version.tags["tune_experiment"] == "notes" and version.tags["tune_trials"] == "3"
    assert version.tags["tune_trial_id"] == text_searched["best"]["trial_id"]
    parent = client.get_run(version.tags["tune_parent_run_id"])
    assert parent.data.metrics["best_valid_loss"] == pytest.approx(text_searched["best"]["valid_loss"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    trials = [r for r in children if r.data.tags.get("kind") == "tune-trial"]
    assert sorted(r.data.tags["tune_trial_id"] for r in trials) == sorted(
        r["trial_id"] for r in text_searched["top"]
    )
    # The test scores reported are those logged with the registered version, and its combiner
    # (tabular champion + note) ranks test stays no worse than the tabular champion alone. Measured:
    # note 0.471 (6 steps of a tiny BERT: chance), tabular 0.75135, combined 0.75134: the combiner
    # weighs a useless note down to nothing. 0.005 (600 x that gap) lets weights fitted on the
    # validation split reorder a few test stays, not cost half a point of AUROC.
    test = text_searched["test"]
    assert client.get_run(version.run_id).data.metrics["test_auroc"] == pytest.approx(test["test_auroc"])
    assert test["test_auroc_combined"] >= test["test_auroc_tabular"] - 0.005, test


def test_text_search_config_refuses_unknown_points_and_options() -> None:
    from pydantic import ValidationError

    from tune.text_search import TextSearchConfig

    with pytest.raises(ValidationError, match="max_depth"):
        TextSearchConfig(task="negex", name="x", points=[{"max_depth": 3}])
    with pytest.raises(ValidationError, match="register"):
        TextSearchConfig(task="negex", name="x", register=False)


def test_search_defaults_match_the_model() -> None:
    from ml.experiment import TABULAR_MODEL
    from ml.tabular import TabularConfig
    from tune.xgboost_search import SearchConfig, default_point, search_space

    assert SearchConfig.model_fields["model_name"].default == TABULAR_MODEL
    assert set(default_point()) == set(search_space()) <= set(TabularConfig.model_fields)


def test_cli_refuses_bad_input_before_starting_ray(tmp_path: Path) -> None:
    env = {**os.environ, "MEDISCALE_DATA_DIR": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tune", *args], capture_output=True,
                              text=True, env=env, timeout=120)  # fmt: skip

    for model in ("xgboost", "text"):
        missing = cli(model, "--features", str(tmp_path / "nope"), "--num-samples", "2")
        assert missing.returncode == 2 and "manifest.json" in missing.stderr, missing.stderr
        assert "Traceback" not in missing.stderr
        nothing = cli(model, "--resume", "--name", "never-ran")
        assert nothing.returncode == 2 and "never-ran" in nothing.stderr
    unknown = cli("text", "--task", "icd-coding")
    assert unknown.returncode == 2 and "unknown task 'icd-coding'" in unknown.stderr
    no_features = cli("text", "--task", "readmission")
    assert no_features.returncode == 2 and "--features" in no_features.stderr
    no_datasets = cli("text", "--task", "negex", "--datasets", str(tmp_path / "nowhere"))
    assert no_datasets.returncode == 2 and "nowhere" in no_datasets.stderr
