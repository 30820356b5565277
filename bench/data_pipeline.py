"""Feature pipeline throughput and peak memory: Ray Data against single-process pandas.

Both variants run the same transforms (data.features) end to end, from the raw parquet
folder to a published feature folder, each in a fresh subprocess whose whole process tree
(Ray's raylet, workers and object store included) is sampled for proportional set size
(PSS, so shared object-store pages are not counted twice). Run:

    python bench/data_pipeline.py --json bench/results/data_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

log = logging.getLogger("bench.data_pipeline")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import emit  # noqa: E402

ADMISSIONS_PER_PATIENT = 1.94  # measured mean of the generator; sizes are in admissions


def _tree_pss_mb(proc: psutil.Process) -> float:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def run_measured(cmd: list[str], result_file: Path) -> tuple[dict, float]:
    """Run a worker subprocess; return its JSON result and the peak PSS of its process tree."""
    proc = subprocess.Popen([*cmd, "--result", str(result_file)], stdout=subprocess.DEVNULL, cwd=ROOT)
    handle = psutil.Process(proc.pid)
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                peak = max(peak, _tree_pss_mb(handle))
            except psutil.NoSuchProcess:
                return
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc.wait()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed with exit code {proc.returncode}")
    return json.loads(result_file.read_text()), peak


def worker(kind: str, raw: str, out: str, result_file: Path) -> None:
    """Subprocess body: build the feature folder one way and print the timing as JSON."""
    logging.basicConfig(level=logging.WARNING)
    shutil.rmtree(out, ignore_errors=True)
    if kind in ("ray", "ray-shuffle"):
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        ready = time.perf_counter()
        from data.features import build_features

        manifest = build_features(raw, out, shuffle=kind == "ray-shuffle")
        seconds = time.perf_counter() - ready
        startup = ready - started
    else:
        from data.features import compute_features_pandas, feature_spec
        from data.featureset import SPLIT_COLUMN, write_feature_frame

        started = time.perf_counter()
        frame = compute_features_pandas(raw).drop(columns=[SPLIT_COLUMN])
        manifest = write_feature_frame(frame, out, feature_spec(raw))
        seconds = time.perf_counter() - started
        startup = 0.0
    rows = sum(s["rows"] for s in manifest["splits"].values())
    result = {
        "seconds": seconds,
        "startup_seconds": startup,
        "feature_rows": rows,
        "plan": manifest.get("pipeline"),
    }
    result_file.write_text(json.dumps(result))


def ensure_raw(admissions: int, cache: Path) -> tuple[Path, int]:
    """Generate (once) a synthetic raw folder with about `admissions` stays."""
    import pyarrow.dataset as pads

    raw = cache / f"raw_{admissions}"
    if not (raw / "manifest.json").exists():
        patients = int(admissions / ADMISSIONS_PER_PATIENT)
        log.warning("generating %d patients into %s", patients, raw)
        subprocess.run(
            [sys.executable, "-m", "data", "synth", "--patients", str(patients), "--seed", "2024",
             "--out", str(raw), "--overwrite"],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    rows = pads.dataset(raw / "admissions").count_rows()
    return raw, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="Write results here.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--cache", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument(
        "--variants", nargs="+", default=["pandas", "ray"], choices=["pandas", "ray", "ray-shuffle"],
        help="ray: the plan the folder allows (patient parts for synthetic data); ray-shuffle: one "
        "shuffle on the patient, what a folder without patient parts gets",
    )  # fmt: skip
    parser.add_argument("--worker", choices=["ray", "ray-shuffle", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--raw", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.raw, args.out, args.result)
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    args.cache.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes:
        raw, rows = ensure_raw(size, args.cache)
        measured = {}
        for kind in args.variants:
            cmd = [sys.executable, __file__, "--worker", kind, "--raw", str(raw),
                   "--out", str(args.cache / f"features_{kind}_{size}")]  # fmt: skip
            result, peak = run_measured(cmd, args.cache / f"result_{kind}_{size}.json")
            measured[kind] = {**result, "peak_pss_mb": peak}
            log.warning("%s %d rows: %.1fs, peak %.0f MB", kind, rows, result["seconds"], peak)
        entry = {"rows": rows, "feature_rows": measured[args.variants[0]]["feature_rows"]}
        for kind, m in measured.items():
            key = kind.replace("-", "_")
            entry.update({
                f"{key}_rows_per_s": rows / m["seconds"],
                f"{key}_seconds": m["seconds"],
                f"{key}_peak_rss_mb": m["peak_pss_mb"],
            })  # fmt: skip
            if kind != "pandas":
                entry[f"{key}_startup_seconds"] = m["startup_seconds"]
                entry[f"{key}_plan"] = m["plan"]
        results.append(entry)
        assert len({m["feature_rows"] for m in measured.values()}) == 1, "the variants disagree on rows"
        report = {
            "benchmark": "data_pipeline",
            "machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
            "memory_metric": "peak PSS of the whole process tree, MB",
            "load_average_1min": os.getloadavg()[0],
            "results": results,
        }
        emit(report, args.json)  # after every size: a long run stopped early keeps what it measured


if __name__ == "__main__":
    main()
