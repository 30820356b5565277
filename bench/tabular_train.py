"""XGBoostTrainer against plain xgboost.train on the same data, rounds and threads.

Same feature matrix (about 100k synthetic admissions), same parameters, a fixed number of
rounds (no early stopping, so all variants do the same work) and two threads in total:
plain xgboost with nthread=2, Ray with 1 worker x 2 threads and 2 workers x 1 thread.
Ray's wall time is split into the training part (measured inside the worker around
xgboost.train, minus the time spent in ray.train.report) and fixed overhead (everything
else: controller and worker start-up, the rows' hand-off to the worker, the reports, the final
checkpoint and the end of the run). The driver's own preparation before `fit` (reading the
splits, fitting the preprocessor, putting the rows in the object store) is `driver_prepare_s`.
The first Ray run of a fresh cluster pays one-time costs too (class exports, first imports);
`--repeats 2` or more also measures later runs on the same cluster (`ray_overhead_warm_s`).
Run:

    python bench/tabular_train.py --json bench/results/tabular_train.json --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
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
    parser.add_argument("--repeats", type=int, default=1, help="Ray runs per setting; the first is cold")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    import ray
    import ray.data
    import xgboost

    from data.featureset import read_manifest, read_split_pandas
    from ml.tabular import TRAIN_ENV, Preprocessor, TabularConfig, train

    load_start = os.getloadavg()[0]
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
    runs, repeats = {}, []
    for repeat in range(args.repeats):
        for workers, threads in ((1, 2), (2, 1)):
            cfg = config.model_copy(update={"num_workers": workers, "cpus_per_worker": threads})
            result = train(features, cfg, storage_path=str(args.cache / "ray_results"))
            s = result.seconds
            run = {
                "fit_wall_s": s["fit"],
                "worker_train_s": s["worker_train"],
                "worker_data_s": s["worker_data"],
                "overhead_s": s["fit"] - s["worker_train"],
                "worker_report_s": s["worker_report"],
                "driver_prepare_s": s["prepare"],
                "best_round": result.best_iteration + 1,
            }
            runs.setdefault(workers, run)  # the first (cold) run of each configuration
            repeats.append({"repeat": repeat, "workers": workers, **run, "load_average": os.getloadavg()[0]})
            log.warning("ray %d worker(s) x %d thread(s), repeat %d: %s", workers, threads, repeat, run)
    ray.shutdown()
    warm = [r["overhead_s"] for r in repeats if r["workers"] == 1 and r["repeat"] > 0]
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
        "ray_overhead_warm_s": statistics.median(warm) if warm else None,
        "details": runs,
        "repeats": repeats,
        "ray_env": {k: os.environ.get(k, v) for k, v in TRAIN_ENV.items()},
        "load_average": [load_start, os.getloadavg()[0]],
        "cpus": os.cpu_count(),
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
