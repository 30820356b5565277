"""UCI Diabetes 130-US hospitals: our tabular model against the published baseline setting.

Imports the real data with the project's adapter (split by patient_nbr, so no patient is in
two splits), trains `ml.tabular` on Ray Train with early stopping on the validation split,
and scores the test split once, with a patient-grouped bootstrap 95% CI. The baseline is
plain xgboost with the configuration of a published case study (depth 3, learning rate 0.1,
200 trees, scale_pos_weight 8), trained in the same run on the same train split. Run:

    python bench/tabular_uci.py --json bench/results/tabular_uci.json
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import emit  # noqa: E402

log = logging.getLogger("bench.tabular_uci")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    default_datasets = os.environ.get("MEDISCALE_DATASETS", ROOT.parent / "shared" / "datasets")
    parser.add_argument("--datasets", type=Path, default=Path(default_datasets))
    parser.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    import ray
    import ray.data
    import xgboost

    from data.featureset import read_manifest, read_split_pandas
    from data.sources import import_uci_diabetes
    from ml import metrics
    from ml.tabular import Preprocessor, TabularConfig, train

    features = args.cache / "uci_features"
    if not (features / "manifest.json").exists():
        import_uci_diabetes(str(args.datasets / "diabetes130"), str(features), overwrite=True)
    manifest = read_manifest(str(features))
    names, label = [f["name"] for f in manifest["features"]], manifest["label_column"]
    test = read_split_pandas(str(features), "test", [*names, label, "patient_id"])
    y, groups = test[label].to_numpy(), test["patient_id"].to_numpy()

    # Baseline: the published configuration, plain xgboost, no early stopping, no calibration.
    train_df = read_split_pandas(str(features), "train", [*names, label])
    pre = Preprocessor.fit(train_df, manifest)
    dtrain = xgboost.DMatrix(pre.transform(train_df), label=train_df[label], enable_categorical=True)
    baseline_params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.1, "scale_pos_weight": 8,
                       "tree_method": "hist", "nthread": 2, "seed": 0}  # fmt: skip
    baseline = xgboost.train(baseline_params, dtrain, num_boost_round=200)
    baseline_p = baseline.predict(xgboost.DMatrix(pre.transform(test), enable_categorical=True))
    baseline_report = metrics.evaluate(y, baseline_p, n_boot=args.n_boot, groups=groups)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    config = TabularConfig(
        max_rounds=2000, early_stopping_rounds=100, learning_rate=0.03, max_depth=5, min_child_weight=5,
        subsample=0.8, colsample_bytree=0.6, cpus_per_worker=2, report_every=200,
    )  # fmt: skip
    result = train(str(features), config, storage_path=str(args.cache / "ray_results"))
    ours = metrics.evaluate(y, result.predictor.predict_proba(test), n_boot=args.n_boot, groups=groups)
    ray.shutdown()

    report = {
        "benchmark": "tabular_uci",
        "test_auroc": ours.auroc,
        "test_auroc_ci": list(ours.auroc_ci),
        "test_auprc": ours.auprc,
        "test_brier": ours.brier,
        "test_ece": ours.ece,
        "baseline_test_auroc": baseline_report.auroc,
        "baseline_test_auroc_ci": list(baseline_report.auroc_ci),
        "baseline_test_brier": baseline_report.brier,
        "n_test": int(len(y)),
        "n_test_patients": int(len(set(groups))),
        "best_round": result.best_iteration + 1,
        "valid_auc_at_stop": result.valid_metrics.get("valid_auc"),
        "config": config.model_dump(),
        "calibration": result.predictor.calibrator.method,
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
