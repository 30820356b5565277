"""XGBoostTrainer against plain xgboost.train on the same data, rounds and threads.

Same feature matrix (about 100k synthetic admissions), same parameters, a fixed number of
rounds (no early stopping, so all variants do the same work) and two threads in total:
plain xgboost with nthread=2, Ray with 1 worker x 2 threads and 2 workers x 1 thread.
Ray's wall time is split into the training part (measured inside the worker around
xgboost.train, minus the time spent in ray.train.report) and fixed overhead (everything
else: worker start-up, dataset hand-off, the reports, checkpoint). Run:

    python bench/tabular_train.py --json bench/results/tabular_train.json
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import emit  # noqa: E402

log = logging.getLogger("bench.tabular_train")


def ensure_features(cache: Path, patients: int) -> Path:
    raw, features = cache / f"tab_raw_{patients}", cache / f"tab_features_{patients}"
    for cmd, out in (
        (["synth", "--patients", str(patients), "--seed", "7", "--out", str(raw)], raw),
        (["features", "--raw", str(raw), "--out", str(features)], features),
    ):
        if not (out / "manifest.json").exists():
            subprocess.run([sys.executable, "-m", "data", *cmd, "--overwrite"], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL)  # fmt: skip
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--patients", type=int, default=52_000, help="~1.94 admissions each: ~100k rows")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "bench")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    import ray
    import ray.data
    import xgboost

    from data.featureset import read_manifest, read_split_pandas
    from ml.tabular import Preprocessor, TabularConfig, train

    features = str(ensure_features(args.cache, args.patients))
    manifest = read_manifest(features)
    names, label = [f["name"] for f in manifest["features"]], manifest["label_column"]
    config = TabularConfig(max_rounds=args.rounds, early_stopping_rounds=args.rounds + 1, report_every=50)

    started = time.perf_counter()
    train_df = read_split_pandas(features, "train", [*names, label])
    valid_df = read_split_pandas(features, "valid", [*names, label])
    pre = Preprocessor.fit(train_df, manifest)
    dtrain = xgboost.DMatrix(pre.transform(train_df), label=train_df[label], enable_categorical=True)
    dvalid = xgboost.DMatrix(pre.transform(valid_df), label=valid_df[label], enable_categorical=True)
    plain_data = time.perf_counter() - started
    params = config.model_copy(update={"cpus_per_worker": 2}).xgb_params(None)
    started = time.perf_counter()
    xgboost.train(params, dtrain, num_boost_round=args.rounds, evals=[(dtrain, "train"), (dvalid, "valid")],
                  verbose_eval=False)  # fmt: skip
    plain = time.perf_counter() - started
    log.warning("plain xgboost: %.1fs training (+%.1fs data)", plain, plain_data)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    runs = {}
    for workers, threads in ((1, 2), (2, 1)):
        cfg = config.model_copy(update={"num_workers": workers, "cpus_per_worker": threads})
        result = train(features, cfg, storage_path=str(args.cache / "ray_results"))
        s = result.seconds
        runs[workers] = {
            "fit_wall_s": s["fit"],
            "worker_train_s": s["worker_train"],
            "worker_data_s": s["worker_data"],
            "overhead_s": s["fit"] - s["worker_train"],
            "worker_report_s": s["worker_report"],
            "best_round": result.best_iteration + 1,
        }
        log.warning("ray %d worker(s) x %d thread(s): %s", workers, threads, runs[workers])
    ray.shutdown()
    report = {
        "benchmark": "tabular_train",
        "rows_train": len(train_df),
        "rounds": args.rounds,
        "threads_total": 2,
        "plain_s": plain,
        "plain_data_s": plain_data,
        "ray_1w_s": runs[1]["worker_train_s"],
        "ray_2w_s": runs[2]["worker_train_s"],
        "ray_1w_wall_s": runs[1]["fit_wall_s"],
        "ray_2w_wall_s": runs[2]["fit_wall_s"],
        "ray_overhead_s": runs[1]["overhead_s"],
        "ray_2w_overhead_s": runs[2]["overhead_s"],
        "ray_1w_train_ratio": runs[1]["worker_train_s"] / plain,
        "ray_2w_train_ratio": runs[2]["worker_train_s"] / plain,
        "details": runs,
        "cpus": os.cpu_count(),
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
