"""Ray Tune search of the tabular XGBoost model: throughput, rounds saved by ASHA, gain over the defaults.

Runs `tune.xgboost_search.tune_xgboost` (random search + ASHA, one in-process xgboost per CPU,
then the best configuration retrained on Ray Train, evaluated on test and registered) on the
UCI Diabetes 130 features when the dataset is there (imported once, cached like
bench/tabular_uci.py), else on synthetic features. In the same run, the default TabularConfig
is trained the same way as a trial (same data, cap on rounds, early stopping; no ASHA), so
`best_valid_auroc - default_valid_auroc` is what the search bought on the validation split.
Test is only read by the retrained challenger's evaluation. MLflow and the Tune experiments go
to a separate data dir under the cache (artifacts/bench/tune_home), not the project's registry.

    python bench/tune_xgboost.py --json bench/results/tune_xgboost.json
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import emit  # noqa: E402

log = logging.getLogger("bench.tune_xgboost")


def ensure_features(datasets: Path, cache: Path, patients: int) -> tuple[Path, str]:
    """The UCI feature folder if the raw dataset is there, else a synthetic one (both cached)."""
    if (datasets / "diabetes130").is_dir():
        from data.sources import import_uci_diabetes

        features = cache / "uci_features"
        if not (features / "manifest.json").exists():
            import_uci_diabetes(str(datasets / "diabetes130"), str(features), overwrite=True)
        return features, "uci-diabetes130"
    raw, features = cache / f"tab_raw_{patients}", cache / f"tab_features_{patients}"
    for cmd, out in (
        (["synth", "--patients", str(patients), "--seed", "7", "--out", str(raw)], raw),
        (["features", "--raw", str(raw), "--out", str(features)], features),
    ):
        if not (out / "manifest.json").exists():
            subprocess.run([sys.executable, "-m", "data", *cmd, "--overwrite"], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL)  # fmt: skip
    return features, f"synthetic-{patients}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    default_datasets = os.environ.get("MEDISCALE_DATASETS", ROOT.parent / "shared" / "datasets")
    parser.add_argument("--datasets", type=Path, default=Path(default_datasets))
    parser.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--patients", type=int, default=52_000, help="synthetic fallback size")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--max-rounds", type=int, default=600)
    parser.add_argument("--report-every", type=int, default=10)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    # A separate data dir: its own sqlite MLflow registry and Tune experiments.
    home = (args.cache / "tune_home").resolve()
    os.environ["MEDISCALE_DATA_DIR"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    import ray
    import ray.data
    from sklearn.metrics import roc_auc_score

    from data.featureset import read_manifest, read_split_pandas
    from ml.experiment import load_predictor
    from tune.xgboost_search import SearchConfig, default_point, fit_trial, load_trial_data, tune_xgboost

    features, dataset = ensure_features(args.datasets, args.cache, args.patients)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    cpus = int(ray.cluster_resources()["CPU"])
    config = SearchConfig(
        features=str(features),
        name=f"bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}",
        num_samples=args.trials,
        max_rounds=args.max_rounds,
        report_every=args.report_every,
        n_boot=args.n_boot,
        seed=args.seed,
    )
    started = time.perf_counter()
    result = tune_xgboost(
        config, on_summary=lambda table: print(f"\nbest trials:\n{table}\n", file=sys.stderr)
    )
    total = time.perf_counter() - started

    # The default configuration, trained exactly like a trial (in-process, same cap and early stopping).
    data = load_trial_data(str(features))
    fixed = {"max_rounds": config.max_rounds, "report_every": config.report_every,
             "early_stopping_rounds": config.early_stopping_rounds, "seed": config.seed}  # fmt: skip
    started = time.perf_counter()
    _, default_state = fit_trial({**default_point(), **fixed}, data)
    default_seconds = time.perf_counter() - started

    # The registered challenger (trained the production way on Ray Train) scored on valid.
    manifest = read_manifest(str(features))
    names, label = [f["name"] for f in manifest["features"]], manifest["label_column"]
    valid = read_split_pandas(str(features), "valid", [*names, label])
    challenger = load_predictor(config.model_name, "challenger")
    challenger_valid = float(roc_auc_score(valid[label], challenger.predict_raw(valid)))
    ray.shutdown()

    report = {
        "benchmark": "tune_xgboost",
        "dataset": dataset,
        "n_train": int(len(data.y_train)),
        "n_valid": int(len(data.y_valid)),
        "cpus": cpus,
        "trials": result["trials"],
        "trials_per_min": result["trials_per_min"],
        "rounds_fraction_run": result["rounds_fraction_run"],
        "rounds_run": result["rounds_run"],
        "rounds_if_no_stopping": result["trials"] * config.max_rounds,
        "stopped_by": result["stopped_by"],
        "best_valid_auroc": result["best_valid_auroc"],
        "default_valid_auroc": default_state.best_auroc,
        "default_best_round": default_state.best_round,
        "default_rounds_run": default_state.rounds,
        "default_seconds": default_seconds,
        "challenger_valid_auroc": challenger_valid,
        "challenger_test_auroc": result["test_auroc"],
        "challenger_test_auroc_ci": result["test_auroc_ci"],
        "registered_version": result["registered_version"],
        "best_trial_id": result["best_trial_id"],
        "best_params": result["best_params"],
        "best_round": result["best_round"],
        "search_seconds": result["search_seconds"],
        "search_and_retrain_seconds": total,
        "settings": config.model_dump(exclude={"features", "name", "points"})
        | {"asha_grace": config.asha_grace},
        "top": result["top"],
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
