"""`monitor drift`: note descriptors (one definition for training and serving), `compare` on
synthetic frames (shifted columns flagged with Evidently's test, unshifted samples not, NaN-only
and categorical columns), the shifted synthetic scenarios, the decision's drift gate, and the
command end to end on a real registry, store and MLflow run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.descriptors import DESCRIPTOR_COLUMNS, note_descriptors
from monitor.drift import NotEnoughRows, check_drift, compare
from serve.store import PredictionRecord, PredictionStore

REPO = Path(__file__).resolve().parents[1]
MAX_SHARE = 0.5  # monitor/rule.yaml's max_drift_share
REPEATS = 20


def population(n: int, rng: np.random.Generator, shift: float = 0.0, columns: int = 40) -> pd.DataFrame:
    """A frame like the feature table: numbers, counts, flags, a category, a risk."""
    data: dict[str, object] = {}
    for j in range(columns):
        if j % 4 == 0:
            data[f"num_{j}"] = rng.normal(0, 1, n)
        elif j % 4 == 1:
            data[f"count_{j}"] = rng.poisson(2.0, n).astype(float)
        elif j % 4 == 2:
            data[f"flag_{j}"] = (rng.random(n) < 0.3).astype(float)
        else:
            data[f"lab_{j}"] = np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(1, 0.4, n))
    data["num_0"] = rng.normal(shift, 1, n)
    data["insurance"] = rng.choice(
        np.array(["Medicare", "Medicaid", "Private"], dtype=object), n, p=[0.5, 0.2, 0.3]
    )
    data["risk"] = rng.beta(2, 12, n)
    data["desc_note_chars"] = rng.normal(1500, 300, n)
    return pd.DataFrame(data)


# --------------------------------------------------------------------------- note descriptors


def test_descriptors_of_a_raw_note_equal_those_of_its_cleaned_text() -> None:
    from data.features import clean_note

    raw = (
        "Pt [**Name**] reports  chest pain.\n\n\nDenies SOB.   Mother had CHF.\tLives alone. Return if fever."
    )
    assert note_descriptors(raw) == note_descriptors(clean_note(raw))
    got = note_descriptors(raw)
    assert set(got) == set(DESCRIPTOR_COLUMNS)
    assert got["desc_note_chars"] == len(clean_note(raw))
    assert got["desc_negation_rate"] == pytest.approx(1 / 5)  # SOB denied, of 5 mentions
    assert got["desc_family_rate"] == pytest.approx(1 / 5)
    assert got["desc_abbrev_rate"] == pytest.approx(2 / 5)  # SOB, CHF
    assert all(np.isnan(v) for v in note_descriptors(None).values())
    assert all(np.isnan(v) for v in note_descriptors("   ").values())
    assert np.isnan(note_descriptors("Discharged home in good spirits.")["desc_negation_rate"])


class _StubPredictor:
    """Enough of TabularPredictor for `score_tabular` without explanations."""

    feature_names = ["age"]

    def score(self, frame: pd.DataFrame, contributions: bool = True) -> tuple[np.ndarray, None]:
        assert not contributions  # called with top_k 0
        return np.full(len(frame), 0.1), None


def test_served_descriptors_equal_the_training_ones_and_no_note_text_is_stored(tmp_path: Path) -> None:
    """A replayed admission's stored descriptors equal those of the feature folder's note."""
    from data.features import TEXT_COLUMN, compute_features_pandas
    from data.raw import write_raw_folder
    from data.record import PatientRecord
    from data.replay import raw_records
    from data.synth import generate_block
    from serve.scoring import combine, score_tabular, to_prediction, to_store_row

    tables = generate_block(3, 0, 40)
    raw = str(tmp_path / "raw")
    write_raw_folder(raw, {k: v for k, v in tables.items() if k != "latents"}, {"kind": "synthetic"})
    features = compute_features_pandas(raw).set_index("admission_id")
    replayed = [r for r in raw_records(raw) if r["record"].get("clinical_note")][:25]
    records = [PatientRecord.model_validate(r["record"]) for r in replayed]
    results = score_tabular(_StubPredictor(), records, top_k=0)
    for item, result in zip(replayed, results, strict=True):
        training = note_descriptors(features.loc[item["admission_id"], TEXT_COLUMN])
        served = {k: result.features[k] for k in DESCRIPTOR_COLUMNS}
        assert served == pytest.approx(training, nan_ok=True)
    with PredictionStore(f"sqlite:///{tmp_path / 'p.db'}") as store:
        scored = combine(results[0], None)
        prediction = to_prediction("r-1", scored, "champion", {"tabular": "1"}, 0.1, 0.25, True)
        store.log_prediction(to_store_row(prediction, records[0], scored))
        row = store.get("r-1")
    assert row["note_text"] is None
    assert row["features"]["desc_note_chars"] == results[0].features["desc_note_chars"]
    text = records[0].clinical_note or ""
    assert text[:40] not in json.dumps(row["features"])


# --------------------------------------------------------------------------- compare


def test_a_shifted_column_is_flagged_with_its_test_and_p_value() -> None:
    rng = np.random.default_rng(0)
    reference, current = population(800, rng), population(200, rng, shift=0.8)
    result = compare(reference, current)
    flagged = {c.column: c for c in result.drifted_columns}
    assert "num_0" in flagged
    column = flagged["num_0"]
    assert column.test == "K-S p_value" and column.p_value is not None and column.p_value < 0.05
    assert column.threshold == 0.05 and column.statistic is None
    assert result.columns_checked == 41  # 40 + insurance; risk and desc_* apart
    body = result.to_dict()
    for key in (
        "drift_share",
        "drifted_columns",
        "risk_drift",
        "n_reference",
        "n_current",
        "columns_checked",
    ):
        assert key in body
    assert body["drifted_columns"][0].keys() >= {"column", "test", "statistic", "p_value", "threshold"}
    json.dumps(body, allow_nan=False)


def test_distance_tests_on_a_large_reference() -> None:
    rng = np.random.default_rng(1)
    result = compare(population(3000, rng), population(300, rng, shift=1.0))
    column = next(c for c in result.drifted_columns if c.column == "num_0")
    assert column.test == "Wasserstein distance (normed)" and column.p_value is None
    assert column.statistic is not None and column.statistic >= column.threshold == 0.1


def test_unshifted_samples_are_not_flagged_false_alarm_rate_at_most_10_percent() -> None:
    rng = np.random.default_rng(2)
    reference = population(2000, rng)
    shares = [compare(reference, population(200, rng)).drift_share for _ in range(REPEATS)]
    alarms = sum(s > MAX_SHARE for s in shares)
    assert alarms / REPEATS <= 0.10, shares
    shifted = population(200, rng)
    shifted[[c for c in shifted.columns if c.startswith(("num_", "lab_"))]] *= 3.0
    shifted["insurance"] = "Private"
    shifted[[c for c in shifted.columns if c.startswith("count_")]] += 4
    assert compare(reference, shifted).drift_share > MAX_SHARE


def test_risk_drift_is_reported_apart_from_the_feature_share() -> None:
    rng = np.random.default_rng(3)
    reference, current = population(1500, rng), population(300, rng)
    current["risk"] = rng.beta(4, 8, 300)
    result = compare(reference, current)
    assert result.risk_drift is not None and result.risk_drift.drifted
    assert "risk" not in {c.column for c in result.drifted_columns}
    assert result.to_dict()["risk_drift"]["test"]


def test_nan_only_constant_and_missingness() -> None:
    rng = np.random.default_rng(4)
    reference, current = population(1200, rng), population(300, rng)
    reference["never_measured"] = np.nan
    current["never_measured"] = np.nan
    reference["constant"] = 1.0
    current["constant"] = 1.0
    # A lab feed that stopped: values unknown, count 0.
    current["lab_3"] = np.nan
    current["count_1"] = 0.0
    # A feed that half stopped: the known values look the same, the unknown share moved.
    current.loc[current.index[:150], "lab_7"] = np.nan
    result = compare(reference, current)
    by_name = {c.column: c for c in result.columns}
    assert result.skipped["never_measured"] == "unknown in every reference row"
    assert not by_name["constant"].drifted
    assert by_name["lab_3"].test == "all_missing" and by_name["lab_3"].drifted
    assert by_name["count_1"].drifted
    assert by_name["lab_7"].missing_drifted and by_name["lab_7"].missing_current == pytest.approx(
        0.5, abs=0.1
    )
    # a column constant in the reference that moves is drift
    current["constant"] = rng.choice([1.0, 2.0], 300)
    assert {c.column: c for c in compare(reference, current).columns}["constant"].drifted


def test_categorical_columns_and_unseen_categories() -> None:
    rng = np.random.default_rng(5)
    reference, current = population(800, rng), population(300, rng)
    current["insurance"] = rng.choice(np.array(["Medicare", "Self pay"], dtype=object), 300, p=[0.3, 0.7])
    column = {c.column: c for c in compare(reference, current).columns}["insurance"]
    assert column.kind == "categorical" and column.drifted and column.threshold == 0.05
    # 70% of the current rows in a category the reference never had: measured p = 0.0 (underflow)
    assert column.p_value is not None and column.p_value < 1e-6
    assert column.test == "chi-square p_value"


def test_html_report_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    result = compare(population(500, rng), population(150, rng, shift=1.0), html=tmp_path / "drift.html")
    text = Path(result.html).read_text()
    assert Path(result.html).is_file() and "num_0" in text


# --------------------------------------------------------------------------- shifted scenarios


def _synthetic_features(tmp: Path, seed: int, patients: int, shift: str | None = None) -> pd.DataFrame:
    from data.descriptors import descriptor_frame
    from data.features import TEXT_COLUMN, compute_features_pandas
    from data.raw import write_raw_folder
    from data.synth import generate_block

    tables = generate_block(seed, 0, patients, shift=shift)
    raw = tmp / f"raw-{seed}-{shift}"
    write_raw_folder(str(raw), tables, {"kind": "synthetic", "seed": seed})
    frame = compute_features_pandas(str(raw))
    descriptors = descriptor_frame(frame[TEXT_COLUMN])
    drop = ["admission_id", "patient_id", "label", "split", TEXT_COLUMN]
    return pd.concat([frame.drop(columns=drop).reset_index(drop=True), descriptors], axis=1)


@pytest.mark.slow
def test_each_synthetic_shift_is_flagged_on_its_columns_and_the_unshifted_data_is_not(tmp_path: Path) -> None:
    from data.synth import SHIFT_COLUMNS, SHIFTS

    reference = _synthetic_features(tmp_path, 101, 1000)
    pool = _synthetic_features(tmp_path, 202, 400)
    rng = np.random.default_rng(0)
    shares = [compare(reference, pool.sample(n=500, random_state=rng)).drift_share for _ in range(REPEATS)]
    assert sum(s > MAX_SHARE for s in shares) / REPEATS <= 0.10, shares
    unshifted = compare(reference, pool)
    for name in SHIFTS:
        shifted = compare(reference, _synthetic_features(tmp_path, 202, 400, shift=name))
        flagged = {c.column for c in shifted.drifted_columns} | {
            c.column for c in shifted.descriptor_drift if c.drifted
        }
        expected = set(SHIFT_COLUMNS[name])
        before = {c.column for c in unshifted.drifted_columns} & expected
        found = flagged & expected
        assert len(found) >= len(expected) / 2, (name, sorted(found), sorted(expected))
        assert len(found) > len(before), (name, sorted(found), sorted(before))
        if name == "note_template":
            assert flagged & set(DESCRIPTOR_COLUMNS), sorted(flagged)


# --------------------------------------------------------------------------- store, gate, CLI


def _served(store: PredictionStore, n: int, variant: str, versions: dict, start: datetime, rng) -> None:
    store.log_predictions(
        PredictionRecord(
            request_id=f"{variant}-{start.timestamp():.0f}-{i}",
            variant=variant,
            model_versions=versions,
            risk=float(rng.beta(2, 12)),
            risk_band="low",
            components={},
            features={"age": float(rng.normal(65, 15)), "sex": "F"},
            created_at=start + timedelta(minutes=i),
        )
        for i in range(n)
    )


def test_too_few_current_rows_is_a_clear_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    with PredictionStore(f"sqlite:///{tmp_path / 'p.db'}") as store:
        _served(store, 30, "challenger", {"tabular": "2"}, datetime.now(UTC) - timedelta(hours=2), rng)
        with pytest.raises(NotEnoughRows, match="at least 100"):
            check_drift(store, "challenger", max_drift_share=0.5, log_mlflow=False, record=False)
        with pytest.raises(ValueError, match="variant 'nobody'"):
            check_drift(store, "nobody", max_drift_share=0.5, log_mlflow=False, record=False)


def _decide_with_drift(store: PredictionStore, share: float | None, versions: dict | None = None):
    from test_monitor_decide import EVEN, RULE, fill

    from monitor.decide import decide
    from serve.control import log_event

    now = datetime.now(UTC)
    fill(store, 1500, challenger_sd=0.5, start=now - timedelta(days=100))
    if share is not None:
        log_event(
            store,
            "drift",
            "test",
            {"drift_share": share},
            "test",
            variant="challenger",
            model_versions=versions or {"tabular": "2"},
            drift_share=share,
        )
    return decide(store, EVEN, RULE, as_of=now + timedelta(seconds=1))


@pytest.mark.parametrize(
    ("share", "versions", "promoted", "words"),
    [
        (None, None, True, "no drift check on record"),
        (0.12, None, True, "drift share 0.12 within 0.50"),
        (0.62, None, False, "drift share 0.62 over 0.50 on the challenger's traffic"),
        (0.62, {"tabular": "7"}, True, "no drift check on record"),  # another version's check
    ],
)
def test_the_drift_gate_reads_the_newest_check_of_the_challengers_versions(
    tmp_path: Path, share, versions, promoted: bool, words: str
) -> None:
    with PredictionStore(f"sqlite:///{tmp_path / 'p.db'}") as store:
        decision = _decide_with_drift(store, share, versions)
    gate = next(g for g in decision.gates if g["name"] == "drift")
    assert words in gate["detail"]
    assert gate["passed"] is promoted
    assert (decision.outcome == "promote") is promoted, decision.reasons
    if not promoted:
        assert any("drift share 0.62" in r for r in decision.reasons)


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )


@pytest.mark.slow
def test_monitor_drift_end_to_end(registered_models: dict, synthetic_raw: Path, tmp_path: Path) -> None:
    """Served records (labs and vitals feeds stopped on the challenger) scored by the registered
    challenger, `python -m monitor drift` as a user runs it, then decide's gate."""
    from test_monitor_decide import EVEN, RULE, fill

    from data.record import PatientRecord
    from data.replay import raw_records
    from ml import registry
    from monitor.decide import decide
    from serve.control import events
    from serve.scoring import combine, score_tabular, to_prediction, to_store_row

    home = registered_models["home"]
    env = {"MEDISCALE_DATA_DIR": str(home), "MLFLOW_TRACKING_URI": "", "MEDISCALE_SERVICE_URL": ""}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDISCALE_DATA_DIR", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        registry.configure()
        version = registered_models["tabular_v2"]["registered"]["version"]
        reference = registry.load_reference("readmission-tabular", version)
        assert "risk" in reference and {"desc_note_chars", "age"} <= set(reference.columns)
        assert not {"patient_id", "admission_id", "note", "label"} & set(reference.columns)
        predictor = registry.load_version("readmission-tabular", version).unwrap_python_model().predictor
    replayed = [r["record"] for r in raw_records(str(synthetic_raw), split="test", limit=400)][:150]
    stopped = [{k: v for k, v in r.items() if k not in ("labs", "vitals")} for r in replayed]
    url = f"sqlite:///{tmp_path / 'p.db'}"
    now = datetime.now(UTC)
    versions = {"champion": {"tabular": "1"}, "challenger": {"tabular": str(version)}}
    with PredictionStore(url) as store:
        fill(store, 1500, challenger_sd=0.5, start=now - timedelta(days=100), versions=versions)
        for variant, rows in (("champion", replayed), ("challenger", stopped)):
            records = [PatientRecord.model_validate(r) for r in rows]
            results = score_tabular(predictor, records, top_k=0)
            for i, (record, result) in enumerate(zip(records, results, strict=True)):
                scored = combine(result, None)
                prediction = to_prediction(
                    f"{variant}-live-{i}", scored, variant, versions[variant], 0.1, 0.25, True
                )
                row = to_store_row(prediction, record, scored)
                row.created_at = now - timedelta(hours=1, minutes=i)
                store.log_prediction(row)
    since = (now - timedelta(hours=4)).isoformat()
    out, html = tmp_path / "drift.json", tmp_path / "drift.html"
    done = _cli(
        "drift", "--store-url", url, "--since", since, "--json", str(out), "--html", str(html), env=env
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(out.read_text())
    for key in (
        "drift_share", "drifted_columns", "risk_drift", "variant", "model_versions", "n_reference",
        "n_current", "columns_checked", "descriptor_drift",
    ):  # fmt: skip
        assert key in body, key
    assert body["variant"] == "challenger" and body["model_versions"] == {"tabular": str(version)}
    assert body["n_current"] == 150 and body["drift_share"] > 0.5
    drifted = {c["column"]: c for c in body["drifted_columns"]}
    assert "creatinine_last" in drifted and "sbp_last" in drifted
    assert html.is_file() and body["html"] == str(html.resolve())
    assert replayed[0]["clinical_note"][:40] not in out.read_text() + done.stdout + done.stderr
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDISCALE_DATA_DIR", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        registry.configure()
        run = registry._client().get_run(body["mlflow_run_id"])
        assert run.data.metrics["drift_share"] == pytest.approx(body["drift_share"])
        artifacts = {a.path for a in registry._client().list_artifacts(run.info.run_id, "drift")}
        assert {"drift/drift.json", "drift/drift.html"} <= artifacts
    with PredictionStore(url) as store:
        event = events(store, kind="drift")[0]
        assert event.variant == "challenger" and event.drift_share == pytest.approx(body["drift_share"])
        assert (
            event.payload["mlflow_run_id"] == body["mlflow_run_id"] and event.payload["html"] == body["html"]
        )
        decision = decide(store, EVEN, RULE, as_of=datetime.now(UTC))
    gate = next(g for g in decision.gates if g["name"] == "drift")
    assert not gate["passed"] and "over 0.50 on the challenger's traffic" in gate["detail"]
    assert decision.outcome != "promote"
    few = _cli("drift", "--store-url", url, "--since", since, "--min-rows", "1000", "--no-mlflow", env=env)
    assert few.returncode == 2 and "--min-rows" in few.stderr and "Traceback" not in few.stderr


def test_a_version_without_a_reference_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml import registry

    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry.configure()
    client = registry._client()
    client.create_registered_model("readmission-tabular")
    (tmp_path / "files").mkdir()
    client.create_model_version("readmission-tabular", source=str(tmp_path / "files"))
    moved = str(tmp_path / "moved-features")
    client.create_model_version(
        "readmission-tabular", source=str(tmp_path / "files"), tags={"features": moved}
    )
    with pytest.raises(registry.RegistryError, match="readmission-tabular v1 has no training reference"):
        registry.load_reference("readmission-tabular", "1")
    with pytest.raises(registry.RegistryError, match="v2 has no training reference and its feature folder"):
        registry.load_reference("readmission-tabular", "2")
