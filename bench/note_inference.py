"""Note-model inference runtimes on CPU: latency, throughput and accuracy of torch fp32, int8, ONNX.

The model is the registered note model's champion in --data-dir (`make note-models` trains one),
loaded as serving loads it (ml.registry.load_verified + NotePredictor.load), then run by each
runtime of ml/note_runtime.py: `torch` (fp32, as trained), `int8` (torch dynamic quantization of
the Linear layers), `onnx` (ONNX Runtime, fp32) and `onnx-int8` (ONNX Runtime, dynamically
quantized graph). The conversion happens at load; its time is reported as `load_s`.

Speed: `NotePredictor.risk` (tokenization, length sorting, padding, forward, softmax,
calibration: what the NoteScorer replica calls) on batches of 1, 8, 16 and 32 of the same
synthetic discharge notes (bench/serve_load.py `make_note`, about 150 MiniLM tokens, head+tail
truncated to the model's max_length), at 1 torch/ONNX Runtime thread (the NoteScorer replica has
num_cpus 1) and at 2. Per cell: one warm-up batch, then batches until --repeats or --budget-s
seconds (at least 5); p50 and p90 of the batch latency, notes/s = batch / p50. The runtimes take
turns per cell, so a change in the machine's load hits them alike; the load average at the start
and the end is in `setup` (another job on the 2 cores inflates every figure).

Accuracy: each runtime's calibrated risk on the same test rows of --features (split `test`,
column `note`, label `label`), AUROC against the label, `accuracy_delta` = AUROC(runtime) -
AUROC(torch), and the largest absolute difference in raw probability and calibrated risk.
`served_default` is the fastest runtime at 1 thread and the NoteScorer batch (16) whose
|accuracy_delta| <= 0.005. Run:

    python bench/note_inference.py --json bench/results/note_inference.json
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from common import emit  # noqa: E402

log = logging.getLogger("bench.note_inference")

BATCHES = (1, 8, 16, 32)
SERVED_BATCH = 16  # serve/config.yaml NoteScorer max_batch_size
MAX_AUROC_DELTA = 0.005


def champion(data_dir: Path) -> str:
    """The note model's champion version, or exit with what to run."""
    from serve_load import NOTE, configure_registry

    from ml import registry

    configure_registry(data_dir)
    try:
        return registry.resolve(NOTE, "champion")
    except Exception as exc:
        sys.exit(f"no champion of {NOTE!r} in {data_dir} ({exc}); run `make note-models` first")


def load(version: str, runtime: str, threads: int):
    """The champion as serving loads it (verified against the registry), run by `runtime`."""
    from functools import partial

    from serve_load import NOTE

    from ml import registry
    from ml.text import NotePredictor

    t0 = time.perf_counter()
    loader = partial(NotePredictor.load, threads=threads, runtime=runtime)
    return registry.load_verified(NOTE, version, loader), time.perf_counter() - t0


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def bench_notes(n: int) -> list[str]:
    import random

    from serve_load import make_note

    rng = random.Random(0)
    return [make_note(rng) for _ in range(n)]


def time_batches(predictor, notes: list[str], batch: int, repeats: int, budget_s: float) -> dict:
    predictor.risk(notes[:batch], batch)  # warm-up (first-call allocations, ORT arena)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (len(times) < 5 or time.perf_counter() - started < budget_s):
        k = len(times) * batch
        chunk = [notes[(k + i) % len(notes)] for i in range(batch)]
        t0 = time.perf_counter()
        predictor.risk(chunk, batch)
        times.append(time.perf_counter() - t0)
    p50 = statistics.median(times)
    p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else p50
    return {
        "batch": batch,
        "p50_ms": round(p50 * 1000, 2),
        "p90_ms": round(p90 * 1000, 2),
        "notes_per_s": round(batch / p50, 1),
        "repeats": len(times),
    }


def accuracy(predictors: dict, features: Path, rows: int | None) -> tuple[dict, int]:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from data.featureset import read_split_pandas

    frame = read_split_pandas(str(features), "test", ["note", "label"])
    frame = frame[frame["note"].notna() & (frame["note"].astype(str).str.strip() != "")]
    if rows:
        frame = frame.head(rows)
    texts, labels = frame["note"].astype(str).tolist(), frame["label"].astype(int).to_numpy()
    scored = {}
    for name, predictor in predictors.items():
        t0 = time.perf_counter()
        raw = predictor.risk_raw(texts, 32)
        scored[name] = (raw, predictor.calibrator(raw) if predictor.calibrator else raw)
        scored[name] += (time.perf_counter() - t0,)
    base_raw, base_risk, _ = scored["torch"]
    base_auroc = roc_auc_score(labels, base_risk)
    out = {}
    for name, (raw, risk, seconds) in scored.items():
        auroc = roc_auc_score(labels, risk)
        out[name] = {
            "auroc": round(float(auroc), 5),
            "accuracy_delta": round(float(auroc - base_auroc), 5),
            "max_abs_proba_diff": float(np.abs(raw - base_raw).max()),
            "max_abs_risk_diff": float(np.abs(risk - base_risk).max()),
            "scoring_s": round(seconds, 2),
        }
    return out, len(texts)


def main() -> None:
    from ml.note_runtime import RUNTIMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--note", default="", help="what else ran on the machine, for the JSON")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--features", type=Path, default=ROOT / "artifacts" / "features")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--notes", type=int, default=256, help="distinct synthetic notes for timing")
    parser.add_argument("--repeats", type=int, default=40, help="timed batches per cell, at most")
    parser.add_argument("--budget-s", type=float, default=2.5, help="seconds per cell, after 5 batches")
    parser.add_argument("--test-rows", type=int, default=None, help="test rows for accuracy (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ["MEDISCALE_DATA_DIR"] = str(args.data_dir.resolve())
    if not (args.features / "manifest.json").exists():
        sys.exit(f"{args.features}: no feature folder; run `make data` first")
    if "torch" not in args.runtimes:
        sys.exit("--runtimes must include torch (the reference for accuracy_delta)")

    import onnxruntime
    import torch
    import transformers

    started = time.perf_counter()
    load_start = os.getloadavg()
    version = champion(args.data_dir)
    notes = bench_notes(args.notes)
    report: dict = {
        "setup": {
            "model": f"readmission-notes v{version} (champion)",
            "threads": args.threads,
            "batches": list(BATCHES),
            "notes": args.notes,
            "features": str(args.features),
            "repeats_max": args.repeats,
            "budget_s_per_cell": args.budget_s,
            "load_average_start": [round(x, 2) for x in load_start],
            "cpus": os.cpu_count(),
            "cpu": cpu_name(),
            "versions": {
                "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__,
                "transformers": transformers.__version__,
            },
            "note": args.note,
        },
        "runtimes": {r: {"batch": []} for r in args.runtimes},
    }
    predictors: dict = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        per_thread = {}
        for runtime in args.runtimes:
            per_thread[runtime], seconds = load(version, runtime, threads)
            report["runtimes"][runtime].setdefault("load_s", {})[str(threads)] = round(seconds, 2)
        tokens = [len(i) for i in per_thread["torch"].tokenizer(notes)["input_ids"]]
        max_length = per_thread["torch"].config.max_length
        report["setup"]["tokens_per_note_mean"] = round(statistics.mean(tokens), 1)
        report["setup"]["tokens_per_note_after_truncation"] = round(
            statistics.mean(min(t + 2, max_length) for t in tokens), 1
        )
        report["setup"]["max_length"] = max_length
        for batch in BATCHES:
            for runtime in args.runtimes:  # in turns: a load change hits every runtime alike
                cell = time_batches(per_thread[runtime], notes, batch, args.repeats, args.budget_s)
                report["runtimes"][runtime]["batch"].append({"threads": threads, **cell})
                print(f"threads={threads} batch={batch:>2} {runtime:>9}: {cell}", flush=True)
        predictors = per_thread  # the last thread count's predictors score the test rows

    report["accuracy"], test_rows = accuracy(predictors, args.features, args.test_rows)
    report["accuracy_delta"] = {r: v["accuracy_delta"] for r, v in report["accuracy"].items()}
    report["setup"]["test_rows"] = test_rows
    report["setup"]["accuracy_threads"] = args.threads[-1]

    def served_speed(runtime: str) -> float:
        rows = report["runtimes"][runtime]["batch"]
        cells = [c for c in rows if c["batch"] == SERVED_BATCH and c["threads"] == min(args.threads)]
        return cells[0]["notes_per_s"]

    eligible = [r for r in args.runtimes if abs(report["accuracy_delta"][r]) <= MAX_AUROC_DELTA]
    report["served_default"] = {
        "runtime": max(eligible, key=served_speed),
        "rule": f"fastest at {min(args.threads)} thread(s), batch {SERVED_BATCH}, with |accuracy_delta| "
        f"<= {MAX_AUROC_DELTA}",
        "notes_per_s": {r: served_speed(r) for r in args.runtimes},
        "eligible": eligible,
    }
    report["setup"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["setup"]["seconds"] = round(time.perf_counter() - started, 1)
    emit(report, args.json)


if __name__ == "__main__":
    main()
