"""Note-model search: Tune trials that are Ray Train runs, ASHA on validation loss, MLflow parent
and child runs, and the best trial registered as challenger with its provenance."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_text_search_registers_the_best_trial(
    ray_cluster: object,
    synthetic_features: Path,
    tiny_bert: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow import MlflowClient

    from ml import registry
    from tune.text_search import TextSearchConfig, run_text_search

    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    search = TextSearchConfig(
        task="readmission", name="notes-test", features=str(synthetic_features), sample=160, num_samples=2,
        max_steps=6, eval_every=3, model=str(tiny_bert), max_length=64, head_tokens=16, n_boot=20,
    )  # fmt: skip
    out = run_text_search(search)
    assert out["trials"] == 2
    assert out["best"]["valid_loss"] > 0 and out["best"]["steps"] in (3, 6)
    assert "valid_loss" in out["table"]
    registry.configure()
    client = MlflowClient()
    version = client.get_model_version("readmission-notes", out["registered"]["version"])
    assert version.tags["tune_experiment"] == "notes-test" and version.tags["tune_trials"] == "2"
    parent = client.get_run(version.tags["tune_parent_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 2
    assert (tmp_path / "tune" / "notes-test" / "search.json").exists()
