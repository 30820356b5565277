"""How well `monitor drift` finds the synthetic shifts, and how often it cries wolf: detection rate
against the number of current predictions, per shift (`data.synth.SHIFTS`), and the false-alarm
rate of the drift gate on unshifted data.

Why: a drift check is only useful if it flags a real change on the columns that changed with a
few hundred predictions, and stays quiet on a fresh sample of the training population. Both
depend on the sample size (Evidently's distance tests have a fixed threshold; sampling noise
falls with n), so both are measured against n.

Set-up (all in one process, no Ray):

- reference population: `generate_block(--seed, 0, --reference-patients)` -> the feature
  pipeline's own transforms (`compute_features_pandas`); a model (XGBoost, 150 rounds, depth 3,
  on the project's Preprocessor, uncalibrated) is fitted on it, and the training reference is
  `ml.tabular.reference_frame` (2,000 seeded rows: features, note descriptors, the model's risk),
  exactly what training logs to MLflow; the model is fitted on the population's train split and
  the risk is tested against its risk on the held-out rows (training logs the valid split's);
- current pools: `generate_block(--seed + 1, 0, --pool-patients, shift=...)` for the unshifted
  generator and each shift (same seed: the recording shifts draw the same random numbers, so only
  the shift differs), scored by the same model, laid out like the stored served features;
- for each n in --sizes and each of --repeats repeats: a random sample of n rows of a pool
  (without replacement within a repeat) against the reference with `monitor.drift.compare`.

Definitions:

- `detection_rate` (per shift and n): share of repeats in which at least half of the shift's
  columns (`data.synth.SHIFT_COLUMNS`) are flagged drifted; `detected_at_n`: the smallest n with
  a detection rate >= 0.8 (null: none of the sizes);
- `false_detection_rate`: the same rule applied to unshifted samples of the same n (how often
  those columns are flagged without a shift);
- `gate_rate`: share of repeats with a drift share over max_drift_share (monitor/rule.yaml),
  the decision's drift gate; `false_alarm_rate`: that share on unshifted samples, over every
  n >= the command's default minimum of current rows (100), and per n in `false_alarm_by_n`;
- `descriptor_rate` / `risk_rate`: share of repeats with any note descriptor / the predicted
  risk flagged (`risk_rate_in_sample_reference`: against the risk on the training rows instead).

Run:

    python bench/drift.py --json bench/results/drift.json [--repeats 20] [--sizes 50,100,200,500,1000,2000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import emit  # noqa: E402

from monitor.drift import MIN_ROWS, compare  # noqa: E402

DETECTED = 0.8


def features(folder: Path, seed: int, patients: int, shift: str | None = None) -> pd.DataFrame:
    """Feature rows (with the note text) of a synthetic population, by the pipeline's transforms."""
    from data.features import compute_features_pandas
    from data.raw import write_raw_folder
    from data.synth import generate_block

    tables = generate_block(seed, 0, patients, shift=shift)
    raw = folder / f"raw-{seed}-{shift or 'none'}"
    write_raw_folder(str(raw), tables, {"kind": "synthetic", "seed": seed, "shift": shift})
    return compute_features_pandas(str(raw))


def fit_model(frame: pd.DataFrame, seed: int) -> Any:
    """A small XGBoost model on the project's Preprocessor: the reference risk's model."""
    import xgboost

    from data.features import ID_COLUMNS, LABEL, SPLIT_COLUMN, TEXT_COLUMN
    from ml.tabular import Calibrator, Preprocessor, TabularPredictor

    inputs = [c for c in frame.columns if c not in {*ID_COLUMNS, LABEL, SPLIT_COLUMN, TEXT_COLUMN}]
    kinds = []
    for name in inputs:
        dtype = frame[name].dtype
        kind = "boolean" if pd.api.types.is_bool_dtype(dtype) else "numeric"
        if not (pd.api.types.is_numeric_dtype(dtype) or kind == "boolean"):
            kind = "categorical" if frame[name].dropna().map(type).eq(str).all() else "boolean"
        kinds.append({"name": name, "type": kind})
    manifest = {"features": kinds, "label_column": LABEL}
    pre = Preprocessor.fit(frame, manifest)
    matrix = xgboost.DMatrix(pre.transform(frame), label=frame[LABEL].to_numpy(), enable_categorical=True)
    params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.1, "seed": seed, "nthread": 1}
    booster = xgboost.train(params, matrix, num_boost_round=150)
    return TabularPredictor(booster, pre, Calibrator("none"))


def run(
    sizes: list[int],
    repeats: int,
    seed: int,
    reference_patients: int,
    pool_patients: int,
    partial: Path | None = None,
) -> dict[str, Any]:
    from data.features import TEXT_COLUMN
    from data.featureset import SPLIT_COLUMN
    from data.synth import SHIFTS
    from ml.tabular import reference_frame
    from monitor.decide import read_rule

    started = time.perf_counter()
    max_share = read_rule().max_drift_share
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        base = features(Path(tmp), seed, reference_patients)
        # As training does: fit on the train split, reference from its rows, and the risk
        # reference from held-out (valid + test) rows, since in-sample risk is optimistic.
        train = base[base[SPLIT_COLUMN] == "train"]
        model = fit_model(train, seed)
        reference = reference_frame(model, train, TEXT_COLUMN, seed=seed)
        held_out = base[base[SPLIT_COLUMN] != "train"]
        risk_reference = pd.DataFrame({"risk": model.predict_proba(held_out).astype("float64")})
        pools = {
            name: reference_frame(
                model, features(Path(tmp), seed + 1, pool_patients, shift), TEXT_COLUMN, max_rows=10**9
            )
            for name, shift in [("unshifted", None), *((s, s) for s in SHIFTS)]
        }
    prepared = time.perf_counter() - started
    sizes = [n for n in sizes if n <= min(len(p) for p in pools.values())]
    outcomes: dict[str, dict[int, list[dict[str, Any]]]] = {name: {} for name in pools}
    config = {
        "sizes": sizes,
        "repeats": repeats,
        "seed": seed,
        "reference_patients": reference_patients,
        "reference_rows": len(reference),
        "risk_reference_rows": len(risk_reference),
        "pool_patients": pool_patients,
        "pool_rows": {name: len(pool) for name, pool in pools.items()},
        "max_drift_share": max_share,
        "min_rows": MIN_ROWS,
        "detected_when": "at least half of the shift's SHIFT_COLUMNS flagged",
    }
    report: dict[str, Any] = {}
    for n in sizes:
        for name, pool in pools.items():
            rows = []
            for _ in range(repeats):
                sample = pool.sample(n=n, random_state=rng)
                result = compare(reference, sample, max_drift_share=max_share)
                risk = compare(risk_reference, sample[["risk"]], columns=[], descriptors=[]).risk_drift
                rows.append(
                    {
                        "flagged": {c.column for c in result.drifted_columns},
                        "share": result.drift_share,
                        "descriptor": any(c.drifted for c in result.descriptor_drift),
                        "risk": bool(risk is not None and risk.drifted),
                        "risk_in_sample": bool(result.risk_drift is not None and result.risk_drift.drifted),
                    }
                )
            outcomes[name][n] = rows
        print(f"n={n} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        report = summarise(outcomes, config, started, prepared, complete=n == sizes[-1])
        if partial is not None:  # a long run keeps what it has measured
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(report, indent=2))
    return report


def summarise(
    outcomes: dict[str, dict[int, list[dict[str, Any]]]],
    config: dict[str, Any],
    started: float,
    prepared: float,
    complete: bool,
) -> dict[str, Any]:
    from data.synth import SHIFT_COLUMNS, SHIFTS

    max_share = config["max_drift_share"]
    sizes = sorted(outcomes["unshifted"])

    def detected(row: dict[str, Any], columns: tuple[str, ...]) -> bool:
        return len(row["flagged"] & set(columns)) >= math.ceil(len(columns) / 2)

    def rate(values: list[bool]) -> float | None:
        return round(float(np.mean(values)), 4) if values else None

    shifts = {}
    for name in SHIFTS:
        columns = SHIFT_COLUMNS[name]
        table = []
        for n in sizes:
            mine, null = outcomes[name][n], outcomes["unshifted"][n]
            table.append(
                {
                    "n": n,
                    "detection_rate": rate([detected(r, columns) for r in mine]),
                    "false_detection_rate": rate([detected(r, columns) for r in null]),
                    "column_flag_rate": {c: rate([c in r["flagged"] for r in mine]) for c in columns},
                    "descriptor_rate": rate([r["descriptor"] for r in mine]),
                    "risk_rate": rate([r["risk"] for r in mine]),
                    "gate_rate": rate([r["share"] > max_share for r in mine]),
                    "mean_drift_share": round(float(np.mean([r["share"] for r in mine])), 4),
                }
            )
        hit = [row["n"] for row in table if (row["detection_rate"] or 0) >= DETECTED]
        shifts[name] = {
            "description": SHIFTS[name],
            "columns": list(columns),
            "detected_at_n": min(hit) if hit else None,
            "rates": table,
        }
    null = outcomes["unshifted"]
    null_by_n = {
        str(n): {
            "false_alarm_rate": rate([r["share"] > max_share for r in null[n]]),
            "mean_drift_share": round(float(np.mean([r["share"] for r in null[n]])), 4),
            "max_drift_share_seen": round(float(np.max([r["share"] for r in null[n]])), 4),
            "descriptor_rate": rate([r["descriptor"] for r in null[n]]),
            "risk_rate": rate([r["risk"] for r in null[n]]),
            "risk_rate_in_sample_reference": rate([r["risk_in_sample"] for r in null[n]]),
        }
        for n in sizes
    }
    counted = [r["share"] > max_share for n in sizes if n >= MIN_ROWS for r in null[n]]
    return {
        "what": "drift detection rate vs current sample size per synthetic shift; gate false alarms",
        "complete": complete,
        "config": {**config, "sizes_done": sizes},
        "false_alarm_rate": rate(counted),
        "false_alarm_by_n": null_by_n,
        "shifts": shifts,
        "seconds": {"prepare": round(prepared, 1), "total": round(time.perf_counter() - started, 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="Write the report here.")
    parser.add_argument("--sizes", default="50,100,200,500,1000,2000", help="Current sample sizes.")
    parser.add_argument("--repeats", type=int, default=20, help="Samples per shift and size.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-patients", type=int, default=2000)
    parser.add_argument("--pool-patients", type=int, default=2000, help="Patients per current pool.")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    report = run(sizes, args.repeats, args.seed, args.reference_patients, args.pool_patients, args.json)
    emit(report, args.json)


if __name__ == "__main__":
    main()
