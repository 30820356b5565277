"""What a careless or hostile client sends, over HTTP to the deployed application: each defect a
single request once turned into a 500, an echo of patient data, or another client's failure.

Every answer must be a 4xx naming the field (or a 503 naming the store), a JSON body that never
repeats the input, and nothing half-written in the store.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from serving import app_config, auth, deploy

from serve.records import MAX_BATCH_ID, MAX_BODY_BYTES

APP = "input-app"
ROUTER = {
    "variants": {
        "champion": {"weight": 0.5, "tabular": "champion", "note": "champion"},
        "challenger": {"weight": 0.5, "tabular": "challenger", "note": "challenger"},
    },
    "shadow": True,
    "max_shadow_tasks": 0,  # every shadow is dropped as if overloaded (counted, never queued)
    "alias_refresh_s": 0,
}
MARKER = "Qxzv-7731"  # a patient id / note marker that must never come back


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("input-store") / "predictions.db"


@pytest.fixture(scope="module")
def base_url(serve_port: int, registered_models: dict, store_path: Path) -> str:
    args = {
        "data_dir": str(registered_models["home"]),
        "store_url": f"sqlite:///{store_path}",
        "max_note_chars": 5000,
    }
    deploy(app_config(APP, "/", args, ROUTER))
    return f"http://127.0.0.1:{serve_port}"


@pytest.fixture
def client(base_url: str):
    with httpx.Client(headers=auth(), base_url=base_url, timeout=60) as http:
        yield http


def stored_ids(store_path: Path) -> set[str]:
    with sqlite3.connect(store_path) as conn:
        return {row[0] for row in conn.execute("SELECT request_id FROM predictions")}


def raw_post(client: httpx.Client, path: str, body: str | bytes, content_type: str = "application/json"):
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return client.post(path, content=data, headers={"content-type": content_type})


def assert_clean_4xx(reply: httpx.Response, status: int, *must_name: str) -> dict:
    """The status, a JSON body, the named fields in it, and none of the marker."""
    assert reply.status_code == status, (reply.status_code, reply.text[:500])
    body = reply.json()
    for name in must_name:
        assert name in reply.text, (name, reply.text[:500])
    assert MARKER not in reply.text
    return body


# --------------------------------------------------------------------------- numbers and text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"age": NaN}', "age"),
        ('{"age": Infinity}', "age"),
        ('{"age": 1e400}', "age"),
        ('{"los_days": -Infinity}', "los_days"),
        ('{"heart_rate": [80, NaN]}', "heart_rate"),
        ('{"labs": {"creatinine": 1e400}}', "creatinine"),
        ('{"age": true}', "age"),
        ('{"age": "67"}', "age"),
        ('{"prior_admissions_365d": 2.5}', "prior_admissions_365d"),
        ('{"via_emergency_department": "yes"}', "via_emergency_department"),
        ('{"vitals": {"spo2": false}}', "spo2"),
    ],
)
def test_non_finite_and_loosely_typed_numbers_are_422_naming_the_field(
    client: httpx.Client, body: str, field: str
) -> None:
    assert_clean_4xx(raw_post(client, "/predict", body), 422, field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"patient_id": "Qxzv-7731\\ud800"}', "patient_id"),
        ('{"clinical_note": "Qxzv-7731 denies pain \\udc00"}', "clinical_note"),
        ('{"clinical_note": "Qxzv-7731\\u0000"}', "clinical_note"),
        ('{"ethnicity": "\\ud83d"}', "ethnicity"),
        ('{"Qxzv-7731\\ud800": 1}', "body"),  # a key that is not text at all
        ('{"Qxzv 7731": 1}', "unknown field"),  # an unknown key is never echoed
    ],
)
def test_lone_surrogates_and_nul_are_422_never_500(client: httpx.Client, body: str, field: str) -> None:
    assert_clean_4xx(raw_post(client, "/predict", body), 422, field)


def test_bodies_that_are_not_utf8_json_are_4xx(client: httpx.Client) -> None:
    for content_type in ("text/plain", "application/json"):
        reply = raw_post(client, "/predict", b'{"age": 67, "clinical_note": "\xff\xfe Qxzv"}', content_type)
        assert 400 <= reply.status_code < 500, (content_type, reply.status_code, reply.text[:300])
        assert "Qxzv" not in reply.text
    reply = raw_post(client, "/predict", b"\xff" * 64, "application/json")
    assert 400 <= reply.status_code < 500, reply.text[:300]


def test_measurement_lists_are_bounded(client: httpx.Client) -> None:
    reply = client.post("/predict", json={"heart_rate": [80.0] * 200_000})
    assert_clean_4xx(reply, 422, "heart_rate", "5000")


def test_a_body_over_the_cap_is_413_before_parsing(client: httpx.Client) -> None:
    body = b'{"clinical_note": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    reply = raw_post(client, "/predict", body)
    assert reply.status_code == 413


def test_a_huge_batch_422_is_short_and_names_no_patient(client: httpx.Client) -> None:
    records = [{"patient_id": f"{MARKER}-{i}", "age": 70, "sex": "?"} for i in range(10_000)]
    reply = client.post("/predict/batch", json={"records": records})
    body = assert_clean_4xx(reply, 422, "records")
    assert len(reply.content) < 10_000, len(reply.content)
    assert len(body["detail"]) <= 20
    many = client.post("/predict/batch", json={"records": records[:200]})  # 200 bad records, 200 errors
    body = assert_clean_4xx(many, 422, "sex")
    assert len(body["detail"]) == 20 and body["more_errors"] == 180


# --------------------------------------------------------------------------- request ids


def test_batch_ids_have_their_own_namespace(client: httpx.Client, store_path: Path) -> None:
    single = client.post("/predict", json={"age": 60}, headers={"x-request-id": "ns-X-0"})
    assert single.status_code == 200, single.text
    batch = client.post(
        "/predict/batch", json={"records": [{"age": 61}, {"age": 62}]}, headers={"x-request-id": "ns-X"}
    )
    assert batch.status_code == 200, batch.text
    assert [p["request_id"] for p in batch.json()["predictions"]] == ["ns-X~0", "ns-X~1"]
    assert {"ns-X-0", "ns-X~0", "ns-X~1"} <= stored_ids(store_path)
    ok = client.post("/feedback", json={"request_id": "ns-X~1", "outcome": False})
    assert ok.status_code == 200, ok.text


def test_a_batch_id_too_long_for_its_records_is_422_before_scoring(
    client: httpx.Client, store_path: Path
) -> None:
    before = stored_ids(store_path)
    too_long = "b" * (MAX_BATCH_ID + 1)
    reply = client.post("/predict/batch", json={"records": [{"age": 70}]}, headers={"x-request-id": too_long})
    assert_clean_4xx(reply, 422, "x-request-id", str(MAX_BATCH_ID))
    assert stored_ids(store_path) == before
    longest = "c" * MAX_BATCH_ID
    fits = client.post(
        "/predict/batch", json={"records": [{"age": 70}] * 3}, headers={"x-request-id": longest}
    )
    assert fits.status_code == 200, fits.text
    assert fits.json()["predictions"][-1]["request_id"] == f"{longest}~2"


def test_a_repeated_id_is_409_and_the_stored_answer_can_be_read(client: httpx.Client) -> None:
    first = client.post("/predict", json={"age": 58}, headers={"x-request-id": "read-me.1"})
    assert first.status_code == 200, first.text
    again = client.post("/predict", json={"age": 99}, headers={"x-request-id": "read-me.1"})
    assert again.status_code == 409 and "/predictions/" in again.text
    stored = client.get("/predictions/read-me.1")
    assert stored.status_code == 200, stored.text
    body = stored.json()
    answer = first.json()
    assert body["risk"] == pytest.approx(answer["risk"]) and body["variant"] == answer["variant"]
    assert body["model_versions"] == answer["model_versions"] and body["feedback"] is None
    assert "features" not in body and "patient_key" not in body
    client.post("/feedback", json={"request_id": "read-me.1", "outcome": True})
    assert client.get("/predictions/read-me.1").json()["feedback"]["outcome"] is True
    assert client.get("/predictions/never-made").status_code == 404
    bad = client.get("/predictions/bad%20id!")
    assert bad.status_code == 422 and [e["loc"] for e in bad.json()["detail"]] == [["path", "request_id"]]


# --------------------------------------------------------------------------- feedback


@pytest.mark.parametrize("outcome", ['"yes"', "1.0", "1", '"true"', "null"])
def test_feedback_outcomes_are_strict_booleans(client: httpx.Client, outcome: str) -> None:
    rid = client.post("/predict", json={"age": 64}).json()["request_id"]
    reply = raw_post(client, "/feedback", f'{{"request_id": "{rid}", "outcome": {outcome}}}')
    assert_clean_4xx(reply, 422, "outcome")
    assert client.get(f"/predictions/{rid}").json()["feedback"] is None  # nothing recorded


# --------------------------------------------------------------------------- the store


def test_a_locked_store_is_503_with_nothing_written_and_recovers(
    client: httpx.Client, store_path: Path
) -> None:
    """Another writer holds the SQLite file past the busy timeout: /predict says the store is
    unavailable (never 500, never a client timeout), keeps nothing, and the same id succeeds once
    the lock is gone, without a restart."""
    locker = sqlite3.connect(store_path, timeout=1, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        reply = client.post("/predict", json={"age": 71}, headers={"x-request-id": "locked-1"})
        waited = time.monotonic() - started
        assert reply.status_code == 503, reply.text
        assert "prediction store unavailable" in reply.text and "locked-1" not in reply.text
        assert waited < 30  # answered inside the proxy's request timeout
    finally:
        if locker.in_transaction:
            locker.rollback()
        locker.close()
    assert "locked-1" not in stored_ids(store_path)
    retry = client.post("/predict", json={"age": 71}, headers={"x-request-id": "locked-1"})
    assert retry.status_code == 200, retry.text


def test_shadows_beyond_the_bound_are_dropped_not_queued(client: httpx.Client, store_path: Path) -> None:
    reply = client.post("/predict", json={"age": 66, "patient_id": "shadow-bound"})
    assert reply.status_code == 200, reply.text
    time.sleep(2.0)
    with sqlite3.connect(store_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM prediction_shadows").fetchone() == (0,)


def test_error_bodies_are_json_everywhere(client: httpx.Client) -> None:
    """Whatever is refused, the body parses as JSON (clients and the fuzzer rely on it)."""
    for reply in (
        raw_post(client, "/predict", '{"age": NaN, "sex": "\\ud800"}'),
        raw_post(client, "/feedback", '{"request_id": "x", "outcome": "maybe"}'),
        client.post("/predict/batch", json={"records": []}),
    ):
        assert 400 <= reply.status_code < 500
        json.loads(reply.text)


# --------------------------------------------------------------------------- PHI never leaves


PHI_ID = "Zqpatient-4412"
PHI_NOTE = "Mrs Wqxyzzy lives at 12 Vrolik Lane, reports chest pain, denies dyspnea."
PHI_MARKERS = ("Zqpatient", "Wqxyzzy", "Vrolik")


def test_phi_markers_reach_no_log_metric_error_body_stored_column_or_drift_report(
    client: httpx.Client,
    store_path: Path,
    registered_models: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Distinctive strings in the patient id and the note, sent through every path (scored,
    batched, refused, fed back, read back): afterwards no Ray or Serve log file of the session, no
    exported metric, no response body, no store column and no Evidently drift report of the
    served traffic holds any of them."""
    import ray

    bodies: list[str] = []
    ok = client.post("/predict", json={"patient_id": PHI_ID, "age": 77, "clinical_note": PHI_NOTE})
    assert ok.status_code == 200, ok.text
    bodies.append(ok.text)
    batch = client.post(
        "/predict/batch",
        json={"records": [{"patient_id": f"{PHI_ID}-{i}", "clinical_note": PHI_NOTE} for i in range(3)]},
    )
    assert batch.status_code == 200, batch.text
    bodies.append(batch.text)
    for refused in (
        {"patient_id": PHI_ID, "clinical_note": PHI_NOTE, "sex": "Wqxyzzy"},
        {"patient_id": PHI_ID, "clinical_note": PHI_NOTE, "age": "Zqpatient"},
        {"patient_id": PHI_ID, "clinical_note": PHI_NOTE, "ethnicity": "Vrolik" * 20},
        {"patient_id": PHI_ID * 20, "clinical_note": PHI_NOTE},
        {"patient_id": PHI_ID, "clinical_note": PHI_NOTE + "\u0000"},
        {"patient_id": PHI_ID, "labs": {"Wqxyzzy": 1.0}},
    ):
        reply = client.post("/predict", json=refused)
        assert reply.status_code == 422, reply.text
        bodies.append(reply.text)
    rid = ok.json()["request_id"]
    for reply in (
        client.post("/feedback", json={"request_id": rid, "outcome": True}),
        client.post("/feedback", json={"request_id": rid, "outcome": "Zqpatient"}),
        client.get(f"/predictions/{rid}"),
    ):
        bodies.append(reply.text)
    for text in bodies:
        assert not [m for m in PHI_MARKERS if m in text], text[:300]

    with sqlite3.connect(store_path) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 (names from the schema)
                flat = " ".join(str(v) for v in row)
                assert not [m for m in PHI_MARKERS if m in flat], table

    time.sleep(3.0)  # Ray flushes worker logs and exports metrics every few seconds
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert any("serve" in p.parts for p in files), "no Serve logs found"
    leaks = [str(p) for p in files if any(m.encode() in p.read_bytes() for m in PHI_MARKERS)]
    assert not leaks, leaks
    for node in ray.nodes():
        if node.get("Alive") and node.get("MetricsExportPort"):
            text = httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics").text
            assert "mediscale_requests" in text or "ray_" in text
            assert not [m for m in PHI_MARKERS if m in text]

    # The drift report (`monitor drift --html`) of the variant that served the marked records
    from ml import registry
    from monitor.drift import check_drift
    from serve.store import PredictionStore

    report = tmp_path / "drift.html"
    with monkeypatch.context() as env:
        env.setenv("MEDISCALE_DATA_DIR", str(registered_models["home"]))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        registry.configure()
        store = PredictionStore(f"sqlite:///{store_path}")
        variant = ok.json()["variant"]
        drift = check_drift(store, variant, min_rows=1, html=report, log_mlflow=False, record=False)
    registry.configure()  # back to the session's registry
    text = report.read_text()
    tested = [c.column for c in drift.columns if c.test != "all_missing"]
    assert drift.n_current >= 1 and tested and any(column in text for column in tested)
    assert not [m for m in PHI_MARKERS if m in text]
