"""Batch scoring: a registered tabular model over a whole feature folder, with Ray Data.

The offline side of the same predictor the service uses: `map_batches` with a callable class,
so each Ray Data worker loads the model once from the registry and scores its blocks. The
served risk of a record and this risk for the same admission agree (tests check to 1e-6),
because both go through `TabularPredictor.predict_proba` on the same feature row.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pandas as pd

from data.featureset import SPLITS, FeatureFolder, FeatureFolderError
from data.storage import MANIFEST_NAME, resolve, staged_output

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("admission_id", "patient_id", "split", "label", "risk", "model", "version")


def parse_model_ref(ref: str) -> tuple[str, str]:
    """`NAME@ALIAS_OR_VERSION` -> (name, alias or version); a bare NAME means the champion."""
    from ml import registry

    name, _, which = ref.partition("@")
    if not name:
        raise ValueError(f"--model: {ref!r} names no model (use NAME@champion or NAME@3)")
    return name, which or registry.CHAMPION


class _Score:
    """One Ray Data worker's scorer: the model is loaded once, in the constructor."""

    def __init__(self, name: str, version: str, tracking_uri: str):
        import mlflow

        from ml import registry
        from ml.tabular import TabularPredictor

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.name, self.version = name, version
        self.predictor = registry.load_verified(name, version, TabularPredictor.load)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(
            {c: batch[c] for c in ("admission_id", "patient_id", "split", "label") if c in batch}
        )
        out["risk"] = self.predictor.predict_proba(batch)
        out["model"], out["version"] = self.name, self.version
        return out


def score_features(
    features: str | FeatureFolder,
    model: str,
    out: str,
    splits: list[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score every admission of `features` (or some splits) with `model`; write parquet to `out`."""
    import ray.data

    from ml import registry
    from ml.tabular import TabularPredictor

    started = time.perf_counter()
    folder = FeatureFolder.open(features, need_positives=False)
    name, which = parse_model_ref(model)
    uri = registry.configure()
    version = registry.resolve(name, which)
    predictor = registry.load_verified(name, version, TabularPredictor.load)
    have = set(folder.feature_names)
    lacking = [c for c in predictor.feature_names if c not in have]
    if lacking:
        raise FeatureFolderError(f"{folder.uri}: lacks the model's feature column(s) {lacking}")
    columns = [*folder.id_columns, folder.label_column, *predictor.feature_names]
    parts = []
    for split in splits or list(SPLITS):
        if split not in SPLITS:
            raise ValueError(f"--split: {split!r} is not one of {', '.join(SPLITS)}")
        files = folder.split_files(split)
        if files:
            ds = ray.data.read_parquet(files, filesystem=folder.fs, columns=columns)
            parts.append(ds.map_batches(lambda b, s=split: b.assign(split=s), batch_format="pandas"))
    if not parts:
        raise FeatureFolderError(f"{folder.uri}: no rows in {splits or list(SPLITS)}")
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    scored = ds.map_batches(
        _Score,
        fn_constructor_args=(name, version, uri),
        batch_format="pandas",
        batch_size=4096,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
    )
    target = resolve(out)
    with staged_output(target, overwrite) as staging:
        scored = scored.materialize()  # scored once, then written and counted
        scored.write_parquet(staging.path, filesystem=staging.fs)
        summary = {
            "kind": "mediscale-scores",
            "model": name,
            "version": version,
            "features": folder.uri,
            "rows": scored.count(),
            "columns": list(OUTPUT_COLUMNS),
            "out": target.uri,
            "seconds": round(time.perf_counter() - started, 2),
        }
        staging.child(MANIFEST_NAME).write_text(json.dumps(summary, indent=2))
    log.info("scored %d rows with %s v%s in %.1fs", summary["rows"], name, version, summary["seconds"])
    return summary
