"""The prediction store on both backends: SQLite (a temp file) and PostgreSQL (a fresh database)."""

from __future__ import annotations

import logging
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from serve.store import (
    DEV_PATIENT_KEY_SALT,
    DuplicateFeedback,
    DuplicateRequest,
    NoFeedbackYet,
    PredictionRecord,
    PredictionStore,
    StoreError,
    UnknownRequest,
    patient_key,
    predictions,
)

NOTE = "Pt discharged home. SECRET-NOTE-TEXT-1234 follow up with cardiology."
PATIENT_ID = "PATIENT-RAW-ID-98765"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'predictions.db'}"
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture
def store(store_url: str):
    with PredictionStore(store_url) as s:
        yield s


def record(request_id: str, variant: str = "champion", **overrides) -> PredictionRecord:
    values = {
        "request_id": request_id,
        "variant": variant,
        "model_versions": {"tabular": "3", "note": "2"},
        "risk": 0.42,
        "risk_band": "medium",
        "components": {"tabular": 0.4, "note": 0.45},
        "features": {"age": 71, "num_prior_admissions": 2, "lab_hba1c": 7.9},
        "patient_key": patient_key(PATIENT_ID, salt="test-salt"),
        "note_text": NOTE,
    }
    values.update(overrides)
    return PredictionRecord(**values)


def row_count(store: PredictionStore) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one()


# --------------------------------------------------------------------------- writes and reads


def test_round_trip(store: PredictionStore) -> None:
    created = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    rec = record(
        "r-1",
        features={
            "age": np.int64(71),
            "lab": np.float64(7.5),
            "missing": float("nan"),
            "flag": np.bool_(True),
        },
        components={"tabular": 0.4, "note": None},
        created_at=created,
    )
    store.log_prediction(rec)
    got = store.get("r-1")
    assert got is not None
    assert got["request_id"] == "r-1"
    assert got["variant"] == "champion"
    assert got["model_versions"] == {"tabular": "3", "note": "2"}
    assert got["risk"] == pytest.approx(0.42)
    assert got["risk_band"] == "medium"
    assert got["components"] == {"tabular": 0.4, "note": None}
    assert got["features"] == {"age": 71, "lab": 7.5, "missing": None, "flag": True}
    assert got["patient_key"] == rec.patient_key
    assert got["note_chars"] == len(NOTE)
    assert got["created_at"] == created and got["created_at"].tzinfo is not None
    assert got["shadow"] is None and got["feedback"] is None
    assert store.get("never-stored") is None


def test_batch_insert_and_counts(store: PredictionStore) -> None:
    store.log_predictions(
        [record(f"b-{i}", variant="champion" if i % 3 else "challenger") for i in range(30)]
    )
    assert row_count(store) == 30
    assert store.counts_by_variant() == {"champion": 20, "challenger": 10}
    store.log_predictions([])  # nothing to do
    later = datetime.now(UTC) + timedelta(hours=1)
    store.log_prediction(record("late", variant="challenger", created_at=later))
    assert store.counts_by_variant(since=later - timedelta(minutes=1)) == {"challenger": 1}


def test_duplicate_request_is_rejected_and_the_first_row_kept(store: PredictionStore) -> None:
    store.log_prediction(record("dup", risk=0.1, risk_band="low"))
    with pytest.raises(DuplicateRequest) as raised:
        store.log_prediction(record("dup", risk=0.9, risk_band="high"))
    assert raised.value.request_ids == ["dup"]
    # a batch with one stored id is rejected as a whole
    with pytest.raises(DuplicateRequest, match="^request_id already stored: dup$"):
        store.log_predictions([record("new-1"), record("dup", risk=0.9), record("new-2")])
    # so is a batch that repeats an id within itself
    with pytest.raises(DuplicateRequest, match="^request_id already stored: new-3$"):
        store.log_predictions([record("new-3"), record("new-3")])
    assert row_count(store) == 1
    kept = store.get("dup")
    assert kept["risk"] == pytest.approx(0.1) and kept["risk_band"] == "low"
    assert store.get("new-1") is None and store.get("new-3") is None
    assert isinstance(raised.value, StoreError) and isinstance(raised.value, ValueError)


def test_feedback_is_joined(store: PredictionStore) -> None:
    store.log_prediction(record("f-1"))
    joined = store.add_feedback("f-1", True, source="ehr-sync")
    assert joined["request_id"] == "f-1"
    assert joined["feedback"]["outcome"] is True
    assert joined["feedback"]["source"] == "ehr-sync"
    assert joined["feedback"]["created_at"].tzinfo is not None
    assert store.get("f-1")["feedback"] == joined["feedback"]


def test_feedback_for_unknown_request(store: PredictionStore) -> None:
    with pytest.raises(UnknownRequest, match="no prediction with request_id 'nope'"):
        store.add_feedback("nope", False)
    store.log_prediction(record("known"))
    assert store.get("known")["feedback"] is None


def test_second_feedback_is_rejected_and_the_first_kept(store: PredictionStore) -> None:
    store.log_prediction(record("f-2"))
    store.add_feedback("f-2", False, source="first")
    with pytest.raises(DuplicateFeedback, match="feedback for 'f-2' already stored"):
        store.add_feedback("f-2", True, source="second")
    assert store.get("f-2")["feedback"]["outcome"] is False
    assert store.get("f-2")["feedback"]["source"] == "first"


def test_a_correction_replaces_the_outcome_and_keeps_the_history(store: PredictionStore) -> None:
    store.log_prediction(record("c-1"))
    with pytest.raises(NoFeedbackYet, match="no feedback to correct"):
        store.correct_feedback("c-1", True, "chart review")
    with pytest.raises(UnknownRequest, match="no prediction"):
        store.correct_feedback("c-none", True, "chart review")
    store.add_feedback("c-1", False, source="ehr", key_name="ehr-feed")
    with pytest.raises(StoreError, match="reason"):
        store.correct_feedback("c-1", True, "  ")
    row = store.correct_feedback("c-1", True, "readmitted elsewhere (chart review)", key_name="dr-admin")
    assert row["feedback"]["outcome"] is True and row["feedback"]["source"] is None
    history = store.feedback_history("c-1")
    assert [(h["kind"], h["outcome"], h["previous_outcome"], h["key_name"]) for h in history] == [
        ("first", False, None, "ehr-feed"),
        ("correction", True, False, "dr-admin"),
    ]
    assert history[1]["reason"] == "readmitted elsewhere (chart review)"
    assert history[1]["created_at"] >= history[0]["created_at"]


def test_shadow_is_logged_and_joined(store: PredictionStore) -> None:
    store.log_prediction(record("s-1", variant="champion", risk=0.3))
    assert store.log_shadow("s-1", "challenger", {"tabular": "4", "note": "2"}, 0.35) is True
    assert store.log_shadow("s-1", "challenger", {"tabular": "4"}, 0.99) is False  # first kept
    shadow = store.get("s-1")["shadow"]
    assert shadow["variant"] == "challenger"
    assert shadow["model_versions"] == {"tabular": "4", "note": "2"}
    assert shadow["risk"] == pytest.approx(0.35)
    assert store.get("s-1")["risk"] == pytest.approx(0.3)  # the prediction itself is untouched
    with pytest.raises(UnknownRequest, match="no prediction with request_id 'never'"):
        store.log_shadow("never", "challenger", {}, 0.5)


def test_joined_frame(store: PredictionStore) -> None:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    store.log_predictions([record(f"j-{i}", created_at=base + timedelta(minutes=i)) for i in range(5)])
    store.add_feedback("j-1", True)
    store.add_feedback("j-3", False)
    store.log_shadow("j-3", "challenger", {"tabular": "4"}, 0.5)

    frame = store.joined()
    assert list(frame["request_id"]) == [f"j-{i}" for i in range(5)]  # oldest first
    assert frame["outcome"].dtype == "boolean"
    assert frame["outcome"].isna().tolist() == [True, False, True, False, True]
    assert frame.loc[frame.request_id == "j-3", "shadow_risk"].item() == pytest.approx(0.5)
    assert str(frame["created_at"].dt.tz) == "UTC"
    assert "note_text" not in frame.columns

    assert list(store.joined(limit=2)["request_id"]) == ["j-3", "j-4"]  # the most recent two
    labelled = store.joined(labelled_only=True)
    assert list(labelled["request_id"]) == ["j-1", "j-3"]
    assert labelled["outcome"].tolist() == [True, False]
    wide = store.joined(expand_features=True)
    assert {"age", "num_prior_admissions", "lab_hba1c"} <= set(wide.columns)
    assert "features" not in wide.columns
    assert store.joined(limit=0).empty


# --------------------------------------------------------------------------- privacy


def test_note_text_absent_unless_asked(store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    leaky_features = {"age": 70, "note_text": NOTE, "patient_id": PATIENT_ID}
    with PredictionStore(store_url) as store:
        store.log_prediction(record("n-1", features=leaky_features))
        store.add_feedback("n-1", True)
        got = store.get("n-1")
        assert got["note_text"] is None
        assert got["note_chars"] == len(NOTE)
        assert got["features"] == {"age": 70}
        with store.engine.connect() as conn:  # nowhere in the raw table either
            raw = conn.execute(sa.select(predictions)).mappings().one()
        assert NOTE not in repr(dict(raw)) and PATIENT_ID not in repr(dict(raw))
        assert NOTE not in repr(record("n-x"))  # nor in the record's repr

    # stored on request, yet still kept out of the logs, even SQLAlchemy's statement echo
    with PredictionStore(store_url, store_note_text=True, echo=True) as store:
        store.log_prediction(record("n-2"))
        assert store.get("n-2")["note_text"] == NOTE
    assert NOTE not in caplog.text and PATIENT_ID not in caplog.text


def test_patient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDISCALE_PATIENT_KEY_SALT", raising=False)
    key = patient_key(PATIENT_ID)
    assert key == patient_key(PATIENT_ID) == patient_key(PATIENT_ID, DEV_PATIENT_KEY_SALT)
    assert re.fullmatch("[0-9a-f]{64}", key), key  # HMAC-SHA256 hex digest
    assert PATIENT_ID not in key
    assert key != patient_key("PATIENT-RAW-ID-98766")
    assert patient_key(12345) == patient_key("12345")
    monkeypatch.setenv("MEDISCALE_PATIENT_KEY_SALT", "a-real-secret")
    assert patient_key(PATIENT_ID) == patient_key(PATIENT_ID, "a-real-secret") != key
    with pytest.raises(ValueError, match="patient_id is empty"):
        patient_key("")
    with pytest.raises(ValueError, match="the patient key salt is empty"):
        patient_key(PATIENT_ID, salt="")


def test_invalid_records_are_refused() -> None:
    with pytest.raises(StoreError, match=r"risk must be in \[0, 1\], got 1.5"):
        record("bad", risk=1.5)
    with pytest.raises(StoreError, match=r"risk must be in \[0, 1\], got nan"):
        record("bad", risk=float("nan"))
    with pytest.raises(StoreError, match="request_id must be a non-empty string of at most"):
        record("")
    with pytest.raises(StoreError, match="an in-memory SQLite store is not shared between connections"):
        PredictionStore("sqlite://")  # in memory: each pooled connection would see another database


# --------------------------------------------------------------------------- backends


def test_sqlite_default_location_and_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDISCALE_STORE_URL", raising=False)
    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(tmp_path / "data"))
    with PredictionStore() as store:
        path = tmp_path / "data" / "predictions.db"
        assert store.url == f"sqlite:///{path}"
        assert store.backend == "sqlite"
        store.log_prediction(record("w-1"))
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 1000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    with sqlite3.connect(path) as raw:  # WAL is a property of the file, seen by any connection
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_postgres_password_is_masked(fresh_postgres_url: str) -> None:
    url = sa.make_url(fresh_postgres_url).set(password="s3cr3t-pw")  # trust auth ignores it
    with PredictionStore(url.render_as_string(hide_password=False)) as store:
        assert store.backend == "postgresql"
        assert "s3cr3t-pw" not in store.url and "s3cr3t-pw" not in repr(store)
        assert "***" in store.url
        store.ping()
    # a plain postgresql:// URL gets the psycopg driver (psycopg2 is not installed)
    plain = sa.make_url(fresh_postgres_url).set(drivername="postgresql")
    with PredictionStore(plain.render_as_string(hide_password=False)) as store:
        assert store.url.startswith("postgresql+psycopg://")


# --------------------------------------------------------------------------- concurrency


def test_concurrent_threads_lose_no_rows(store: PredictionStore) -> None:
    threads, per_thread = 8, 25
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def writer(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                store.log_prediction(record(f"t{t}-{i}", variant=f"v{t % 2}"))
                if i % 5 == 0:
                    store.add_feedback(f"t{t}-{i}", bool(i % 2))
                    store.log_shadow(f"t{t}-{i}", "other", {"tabular": "9"}, 0.5)
                store.get(f"t{t}-{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    assert row_count(store) == threads * per_thread
    assert store.counts_by_variant() == {"v0": 100, "v1": 100}
    assert store.joined()["outcome"].notna().sum() == threads * 5


def test_racing_feedback_is_stored_once(store: PredictionStore) -> None:
    store.log_prediction(record("race"))
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def send(i: int) -> None:
        start.wait()
        try:
            store.add_feedback("race", bool(i % 2), source=f"s{i}")
            outcomes.append("stored")
        except DuplicateFeedback:
            outcomes.append("duplicate")

    pool = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert sorted(outcomes) == ["duplicate"] * 7 + ["stored"]


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from serve.store import PredictionRecord, PredictionStore

    url, name, folder, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    (folder / f"ready-{name}").touch()  # imported; wait for the other process
    while not (folder / "go").exists():
        time.sleep(0.005)
    store = PredictionStore(url)  # both processes also race to create the tables
    for i in range(n):
        store.log_prediction(PredictionRecord(
            request_id=f"{name}-{i}", variant=name, model_versions={"tabular": "1"}, risk=0.5,
            risk_band="medium", components={"tabular": 0.5}, features={"i": i}))
    store.log_predictions([PredictionRecord(
        request_id=f"{name}-batch-{i}", variant=name, model_versions={"tabular": "1"}, risk=0.5,
        risk_band="medium", components={"tabular": 0.5}, features={}) for i in range(n)])
    store.close()
    """
)


def test_two_processes_write_at_once(store_url: str, tmp_path: Path) -> None:
    """Two replica processes write to one database at the same time: no row lost, no error."""
    n = 150
    names = ("replica_a", "replica_b")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, store_url, name, str(tmp_path), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{name}").exists() for name in names):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a writer did not start"
        time.sleep(0.01)
    (tmp_path / "go").touch()  # both start writing at the same moment
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with PredictionStore(store_url) as store:
        assert store.counts_by_variant() == {"replica_a": 2 * n, "replica_b": 2 * n}
