"""What the tabular model's safety choices cost or gain: monotone constraints, additive clinical
drivers (interaction constraints) and training with blanked feature groups.

Models on one feature folder (`make run`'s: 3,000 synthetic patients, seed 0 by default), the
same `TabularConfig` otherwise, each trained with Ray Train as `make run` does: the production
setting (monotone, additive drivers, missing_rate 0.3), then one choice switched off at a time,
then all constraints off. For each: validation and test AUROC on complete rows; test AUROC on
partial rows (the test split with feature groups blanked at random as `data.record.mask_groups`
does, rate 0.3, fixed seed): what a partial request looks like; monotonicity violations (over test
rows, how often one more prior admission, ED visit, Charlson point or LOS day LOWERS the
calibrated risk); and the behavioural probes of ml/behaviour.py scored in process through
serve.scoring (the served path without HTTP). Run:

    python bench/tabular_choices.py --json bench/results/tabular_choices.json
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from common import emit  # noqa: E402

STEPS = {"prior_admissions_365d": 1, "prior_ed_visits_365d": 1, "charlson_index": 1, "los_days": 1.0}


def violations(predictor, frame) -> dict[str, float]:
    """Share of rows whose risk drops when one constrained feature goes up by one step."""
    base = predictor.predict_proba(frame)
    out = {}
    for name, step in STEPS.items():
        if name not in frame:
            continue
        bumped = frame.copy()
        bumped[name] = bumped[name].astype(float) + step
        out[name] = float(((predictor.predict_proba(bumped) - base) < -1e-9).mean())
    return out


def scored(predictor, bodies: list[dict]) -> list[dict]:
    from data.record import PatientRecord
    from serve.scoring import score_tabular

    results = score_tabular(predictor, [PatientRecord.model_validate(b) for b in bodies], 0)
    return [{"risk": r.risk, "missing": r.missing} for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--features", default=str(ROOT / "artifacts" / "features"))
    parser.add_argument("--mask-rate", type=float, default=0.3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    from data.featureset import read_manifest, read_split_pandas
    from data.record import mask_groups
    from ml.behaviour import run_probes
    from ml.metrics import auroc
    from ml.tabular import TabularConfig, train

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    manifest = read_manifest(args.features)
    names, label = [f["name"] for f in manifest["features"]], manifest["label_column"]
    test = read_split_pandas(args.features, "test", [*names, label])
    valid = read_split_pandas(args.features, "valid", [*names, label])
    partial = mask_groups(test, args.mask_rate, seed=2024)
    runs = []
    settings = [
        {"monotone": True, "additive_drivers": True, "missing_rate": 0.3},  # production
        {"monotone": False, "additive_drivers": True, "missing_rate": 0.3},
        {"monotone": True, "additive_drivers": False, "missing_rate": 0.3},
        {"monotone": True, "additive_drivers": True, "missing_rate": 0.0},
        {"monotone": False, "additive_drivers": False, "missing_rate": 0.0},  # unconstrained
    ]
    for setting in settings:
        started = time.perf_counter()
        result = train(
            args.features, TabularConfig(**setting), storage_path=str(ROOT / "artifacts" / "ray_results")
        )
        p = result.predictor
        probes = run_probes(lambda bodies, p=p: scored(p, bodies))
        runs.append({
            **setting,
            "valid_auroc": auroc(valid[label].to_numpy(), p.predict_proba(valid)),
            "test_auroc": auroc(test[label].to_numpy(), p.predict_proba(test)),
            "test_auroc_partial_rows": auroc(partial[label].to_numpy(), p.predict_proba(partial)),
            "best_iteration": result.best_iteration,
            "violations_share": violations(p, test[names]),
            "probes_passed": probes.passed,
            "probes_failed": [r.name for r in probes.failures()],
            "seconds": round(time.perf_counter() - started, 1),
        })  # fmt: skip
        print(runs[-1], file=sys.stderr)
    ray.shutdown()
    emit(
        {
            "features": args.features,
            "rows": {"valid": len(valid), "test": len(test)},
            "mask_rate_for_partial_rows": args.mask_rate,
            "runs": runs,
            "setup": {"python": platform.python_version(), "date": time.strftime("%Y-%m-%d")},
        },
        args.json,
    )


if __name__ == "__main__":
    main()
