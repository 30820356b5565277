"""The Serve application end to end over HTTP, on the session's local Ray cluster, with real
registered models (tabular + tiny note model) and a real prediction store."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from serving import app_config, auth, deploy

from serve.app import (
    RouterConfig,
    pick_variant,
)

EXAMPLE = {"age": 67, "blood_pressure": 140, "clinical_note": "Patient presents with chest pain..."}
TEST_VARIANTS = {
    "champion": {"weight": 0.9, "tabular": "champion", "note": "champion"},
    "challenger": {"weight": 0.1, "tabular": "challenger", "note": "challenger"},
}


@pytest.fixture(scope="module")
def app_args(registered_models: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    store = tmp_path_factory.mktemp("store") / "predictions.db"
    return {
        "tabular_model": "readmission-tabular",
        "note_model": "readmission-notes",
        "data_dir": str(registered_models["home"]),
        "store_url": f"sqlite:///{store}",
        "max_note_chars": 5000,
    }


ROUTER = {"variants": TEST_VARIANTS, "shadow": True, "alias_refresh_s": 1.0}


@pytest.fixture(scope="module")
def base_url(serve_port: int, app_args: dict) -> str:

    deploy(app_config("mediscale", "/", app_args, ROUTER))
    return f"http://127.0.0.1:{serve_port}"


@pytest.fixture
def client(base_url: str):
    with httpx.Client(headers=auth(), base_url=base_url, timeout=60) as http:
        yield http


@pytest.fixture
def store(app_args: dict):
    from serve.store import PredictionStore

    with PredictionStore(app_args["store_url"]) as db:
        yield db


# --------------------------------------------------------------------------- happy paths


def test_the_example_request_gets_one_calibrated_risk(client: httpx.Client, store) -> None:
    reply = client.post("/predict", json=EXAMPLE)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert 0.0 <= body["risk"] <= 1.0 and body["risk_band"] in {"low", "medium", "high"}
    assert body["variant"] in TEST_VARIANTS
    assert set(body["model_versions"]) == {"tabular", "note"}
    assert body["note_used"] is True and body["components"]["note"] is not None
    assert body["components"]["tabular"] is not None
    assert len(body["top_factors"]) == 5
    for factor in body["top_factors"]:
        assert {"feature", "label", "display", "direction", "known", "contribution"} <= set(factor)
        assert factor["direction"] == ("raises" if factor["contribution"] >= 0 else "lowers")
        assert factor["known"] or "unknown" in factor["display"] or "not stated" in factor["display"]
    assert "labs" in body["missing"] and "age" not in body["missing"] and 0 < body["completeness"] < 1
    assert reply.headers["x-request-id"] == body["request_id"]
    row = store.get(body["request_id"])
    assert row is not None and abs(row["risk"] - body["risk"]) < 1e-9  # committed before the 200
    assert row["features"]["sbp_last"] == 140 and row["features"]["age"] == 67
    assert "note_text" not in row or row["note_text"] is None  # notes are not stored by default


def test_the_served_note_risk_is_the_default_runtimes_answer(
    client: httpx.Client, registered_models: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NoteScorer runs AppArgs' default note runtime (ONNX Runtime, int8): the served note risk
    equals that runtime's answer here, and stays close to the fp32 model's."""
    from ml import registry
    from ml.text import NotePredictor
    from serve.settings import AppArgs

    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(registered_models["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry.configure()
    body = client.post("/predict", json=EXAMPLE).json()
    version = body["model_versions"]["note"]
    fp32 = registry.load_verified("readmission-notes", version, NotePredictor.load)
    runtime = AppArgs().note_runtime
    assert runtime != "torch"
    local = fp32.with_runtime(runtime, threads=1)
    [expected] = local.risk([EXAMPLE["clinical_note"]], 1)
    [as_trained] = fp32.risk([EXAMPLE["clinical_note"]], 1)
    assert body["components"]["note"] == pytest.approx(float(expected), abs=1e-5)
    assert body["components"]["note"] == pytest.approx(float(as_trained), abs=0.05)


def test_a_record_without_a_note_uses_the_tabular_risk_alone(client: httpx.Client) -> None:
    body = client.post("/predict", json={"age": 80, "labs": {"creatinine": [1.1, 2.4]}}).json()
    assert body["note_used"] is False and body["components"]["note"] is None
    assert body["risk"] == pytest.approx(body["components"]["tabular"])
    assert body["explanation"].startswith("Tabular model (structured data and note concepts).")
    assert "clinical_note" in body["missing"] and "clinical_note" in body["explanation"]


def test_incoming_request_id_is_honoured_and_not_reused(client: httpx.Client, store) -> None:
    first = client.post("/predict", json={"age": 50}, headers={"x-request-id": "ehr-123.a"})
    assert first.status_code == 200 and first.json()["request_id"] == "ehr-123.a"
    again = client.post("/predict", json={"age": 90}, headers={"x-request-id": "ehr-123.a"})
    assert again.status_code == 409
    assert store.get("ehr-123.a")["features"]["age"] == 50  # the first row is intact


def test_batch_sticky_assignment_and_split(client: httpx.Client) -> None:
    patients = [f"p{i:05d}" for i in range(2000)]
    seen: dict[str, str] = {}
    for start in range(0, len(patients), 250):
        chunk = patients[start : start + 250]
        reply = client.post("/predict/batch", json={"records": [{"patient_id": p, "age": 70} for p in chunk]})
        assert reply.status_code == 200, reply.text
        for pid, prediction in zip(chunk, reply.json()["predictions"], strict=True):
            seen[pid] = prediction["variant"]
    counts = Counter(seen.values())
    # 10% challenger: binomial sd over 2,000 is 13.4; allow 4 sd either way.
    assert 200 - 54 <= counts["challenger"] <= 200 + 54, counts
    again = client.post(
        "/predict/batch", json={"records": [{"patient_id": p} for p in patients[:100]]}
    ).json()
    assert [p["variant"] for p in again["predictions"]] == [seen[p] for p in patients[:100]]


def test_shadow_scores_are_logged_but_never_returned(client: httpx.Client, store) -> None:
    body = client.post("/predict", json={**EXAMPLE, "patient_id": "shadow-1"}).json()
    assert "shadow" not in body
    deadline = time.time() + 30
    row = store.get(body["request_id"])
    while row["shadow"] is None and time.time() < deadline:
        time.sleep(0.5)
        row = store.get(body["request_id"])
    assert row["shadow"] is not None and row["shadow"]["variant"] != body["variant"]
    assert 0 <= row["shadow"]["risk"] <= 1


def test_feedback_is_joined_unknown_is_404_and_second_is_409(client: httpx.Client, store) -> None:
    rid = client.post("/predict", json={"age": 61}).json()["request_id"]
    ok = client.post("/feedback", json={"request_id": rid, "outcome": True})
    assert ok.status_code == 200 and ok.json()["outcome"] is True
    assert store.get(rid)["feedback"]["outcome"] is True
    assert client.post("/feedback", json={"request_id": "never-seen", "outcome": False}).status_code == 404
    second = client.post("/feedback", json={"request_id": rid, "outcome": False})
    assert second.status_code == 409
    assert store.get(rid)["feedback"]["outcome"] is True


def test_variants_healthz_and_docs(client: httpx.Client) -> None:
    variants = client.get("/variants").json()
    assert variants["variants"]["champion"]["weight"] == 0.9
    assert variants["variants"]["champion"]["versions"] == {"tabular": "1", "note": "1"}
    assert variants["variants"]["challenger"]["versions"] == {"tabular": "2", "note": "2"}
    assert sum(variants["requests"].values()) > 0
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"age": "old"}, "age"),
        ({"age": -5}, "age"),
        ({"heart_rate": 900}, "heart_rate"),
        ({"vitals": {"spo2": 140}}, "spo2"),
        ({"labs": {"potasium": 4.0}}, "potassium"),  # an unknown key is never echoed: a hint is given
        ({"sex": "X"}, "sex"),
        ({"blood_presure": 120}, "blood_pressure"),
    ],
)
def test_bad_fields_are_422_naming_the_field(client: httpx.Client, payload: dict, field: str) -> None:
    reply = client.post("/predict", json=payload)
    assert reply.status_code == 422
    assert field in reply.text


def test_422_bodies_name_the_field_but_never_echo_values_or_notes(client: httpx.Client) -> None:
    secret = "Mr. Zyxwv denies chest pain"
    reply = client.post("/predict", json={"labs": {"albumin": 99.125}, "clinical_note": secret, "sex": "Q"})
    assert reply.status_code == 422
    assert "albumin" in reply.text and "sex" in reply.text
    assert "99.125" not in reply.text and "Zyxwv" not in reply.text and '"Q"' not in reply.text


def test_malformed_json_oversized_note_and_bad_request_id(client: httpx.Client) -> None:
    broken = client.post("/predict", content=b'{"age": 67,', headers={"content-type": "application/json"})
    assert broken.status_code == 422
    big = client.post("/predict", json={"clinical_note": "x" * 5001})
    assert big.status_code == 413 and "clinical_note" in big.text
    assert client.post("/predict", json={}, headers={"x-request-id": "bad id!"}).status_code == 422
    assert client.post("/predict/batch", json={"records": []}).status_code == 422


# --------------------------------------------------------------------------- the served answer


def test_served_tabular_risk_equals_the_scoring_module_on_replayed_rows(
    client: httpx.Client, synthetic_raw: Path, registered_models: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of a raw folder replayed over HTTP (`data.replay`) get the tabular risk that
    serve.scoring gives the same record with that model version (and `ml score`, see
    tests/test_record.py)."""
    from data.record import PatientRecord
    from data.replay import raw_records
    from ml import registry
    from serve.scoring import score_tabular

    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(registered_models["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry.configure()
    rows = raw_records(str(synthetic_raw), split="test", limit=20)
    reply = client.post("/predict/batch", json={"records": [r["record"] for r in rows]})
    assert reply.status_code == 200, reply.text[:500]
    predictors: dict[str, object] = {}
    for row, served in zip(rows, reply.json()["predictions"], strict=True):
        version = served["model_versions"]["tabular"]
        if version not in predictors:
            predictors[version] = (
                registry.load_version("readmission-tabular", version).unwrap_python_model().predictor
            )
        [local] = score_tabular(predictors[version], [PatientRecord.model_validate(row["record"])], 0)
        assert served["components"]["tabular"] == pytest.approx(local.risk, abs=1e-6)
        assert served["missing"] == local.missing


def test_note_factors_quote_their_span_and_never_the_note(client: httpx.Client) -> None:
    note = "Pt lives alone. She denies chest pain. Reports shortness of breath at discharge."
    body = client.post("/predict", json={"age": 75, "clinical_note": note, "patient_id": "span-1"}).json()
    factors = {f["feature"]: f for f in body["top_factors"]}
    quoted = [e for f in factors.values() for e in f["evidence"]]
    assert quoted, body["top_factors"]
    for evidence in quoted:
        assert note[evidence["start"] : evidence["end"]] == evidence["text"]
        assert len(evidence["text"]) < 40
    assert note not in reply_text(body)


def reply_text(body: dict) -> str:
    import json

    return json.dumps(body)


def test_behavioural_probes_over_http(serve_port: int, app_args: dict) -> None:
    """CheckList probes (ml/behaviour.py) over HTTP against the application as `make run`
    configures it (tabular models with note concepts, no opaque note model), traffic split
    between champion and challenger; each probe's bodies share a patient id, so one version
    answers a probe and both versions answer some."""
    from ml.behaviour import ProbeError, build_probes, run_probes

    router = {
        "variants": {name: {"weight": 0.5, "tabular": name} for name in ("champion", "challenger")},
        "shadow": False,
        "alias_refresh_s": 0,
    }
    deploy(app_config("clinic", "/clinic", app_args, router))
    try:
        with httpx.Client(
            headers=auth(), base_url=f"http://127.0.0.1:{serve_port}/clinic", timeout=60
        ) as http:

            def score(bodies: list[dict]) -> list[dict]:
                out = []
                for b in bodies:
                    reply = http.post("/predict", json=b)
                    if reply.status_code != 200:
                        raise ProbeError(f"HTTP {reply.status_code}: {reply.text[:200]}")
                    out.append(reply.json())
                return out

            report = run_probes(score, build_probes())
    finally:
        deploy(remove="clinic")
    assert report.passed + report.failed >= 30 and len(report.by_category) == 8
    assert {v for r in report.results for v in r.variants} == {"champion", "challenger"}
    assert report.failed == 0, [(r.name, r.risks, r.reason) for r in report.failures()]


@pytest.mark.parametrize("version", ["1", "2"])
def test_every_probe_passes_for_each_registered_version(
    registered_models: dict, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    """Every probe on each version through serve.scoring, the path TabularScorer runs (the HTTP
    test above splits the probes between the versions)."""
    from data.record import PatientRecord
    from ml import registry
    from ml.behaviour import run_probes
    from serve.scoring import score_tabular

    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(registered_models["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry.configure()
    predictor = registry.load_version("readmission-tabular", version).unwrap_python_model().predictor

    def score(bodies: list[dict]) -> list[dict]:
        results = score_tabular(predictor, [PatientRecord.model_validate(b) for b in bodies], 0)
        return [{"risk": r.risk, "missing": r.missing} for r in results]

    report = run_probes(score)
    assert report.failed == 0, [(r.name, r.risks, r.reason) for r in report.failures()]


# --------------------------------------------------------------------------- hot reload


class Hammer:
    """A concurrent client posting records until stopped; counts statuses."""

    def __init__(self, base_url: str, threads: int = 4):
        self.base_url, self.stop, self.statuses = base_url, threading.Event(), Counter()
        self.versions: Counter = Counter()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        with httpx.Client(headers=auth(), base_url=self.base_url, timeout=60) as http:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    reply = http.post("/predict", json={**EXAMPLE, "patient_id": f"h{index}-{i}"})
                    self.statuses[reply.status_code] += 1
                    if reply.status_code == 200:
                        body = reply.json()
                        self.versions[(body["variant"], body["model_versions"]["tabular"])] += 1
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1

    def __enter__(self) -> Hammer:
        for t in self.threads:
            t.start()
        time.sleep(2)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(2)
        self.stop.set()
        for t in self.threads:
            t.join()


def _router_pid(client: httpx.Client) -> int:
    return client.get("/variants").json()["replica"]["pid"]


def test_weight_and_version_changes_reconfigure_in_place_without_failures(
    base_url: str, client: httpx.Client, app_args: dict
) -> None:

    pid = _router_pid(client)
    everyone_challenger = {
        **ROUTER,
        "variants": {
            **TEST_VARIANTS,
            "champion": {**TEST_VARIANTS["champion"], "weight": 0.0},
            "challenger": {**TEST_VARIANTS["challenger"], "weight": 1.0},
        },
    }
    pinned = {
        **everyone_challenger,
        "variants": {
            **everyone_challenger["variants"],
            "challenger": {"weight": 1.0, "tabular": "1", "note": "1"},
        },
    }
    with Hammer(base_url) as hammer:
        deploy(app_config("mediscale", "/", app_args, everyone_challenger))
        time.sleep(3)
        deploy(app_config("mediscale", "/", app_args, pinned))
        time.sleep(3)
    assert set(hammer.statuses) == {200}, hammer.statuses
    assert hammer.versions[("challenger", "1")] > 0 and hammer.versions[("challenger", "2")] > 0
    assert _router_pid(client) == pid  # reconfigured, not restarted
    deploy(app_config("mediscale", "/", app_args, ROUTER))
    assert client.get("/variants").json()["variants"]["champion"]["weight"] == 0.9


def test_promotion_in_the_registry_reaches_the_service(
    client: httpx.Client, registered_models: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml import registry

    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(registered_models["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry.configure()
    registry.promote("readmission-tabular", "2")
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            versions = client.get("/variants").json()["variants"]["champion"]["versions"]
            if versions["tabular"] == "2":
                break
            time.sleep(0.5)
        assert versions["tabular"] == "2"
    finally:
        registry.rollback("readmission-tabular")


# --------------------------------------------------------------------------- failures and PostgreSQL


def test_a_model_that_fails_to_load_makes_healthz_and_predict_503(serve_port: int, app_args: dict) -> None:

    args = {**app_args, "note_model": "no-such-note-model"}
    deploy(app_config("broken", "/broken", args, {**ROUTER, "shadow": False}))
    try:
        with httpx.Client(
            headers=auth(), base_url=f"http://127.0.0.1:{serve_port}/broken", timeout=60
        ) as http:
            health = http.get("/healthz")
            assert health.status_code == 503 and "no-such-note-model" in health.json()["reason"]
            reply = http.post("/predict", json=EXAMPLE)
            assert reply.status_code == 503 and "Traceback" not in reply.text
    finally:
        deploy(remove="broken")


def test_postgres_store_end_to_end(serve_port: int, app_args: dict, postgres_url: str) -> None:

    from serve.store import PredictionStore

    deploy(app_config("pg", "/pg", {**app_args, "store_url": postgres_url}, {**ROUTER, "shadow": False}))
    try:
        with httpx.Client(headers=auth(), base_url=f"http://127.0.0.1:{serve_port}/pg", timeout=60) as http:
            rid = http.post("/predict", json=EXAMPLE).json()["request_id"]
            assert http.post("/feedback", json={"request_id": rid, "outcome": False}).status_code == 200
        with PredictionStore(postgres_url) as db:
            row = db.get(rid)
        assert row is not None and row["feedback"]["outcome"] is False and row["variant"] in TEST_VARIANTS
    finally:
        deploy(remove="pg")


# --------------------------------------------------------------------------- code


def test_variant_assignment_is_stable_and_follows_the_weights() -> None:
    weights = {"champion": 0.7, "challenger": 0.3}
    picks = Counter(pick_variant(f"patient-{i}", weights) for i in range(20000))
    assert abs(picks["challenger"] / 20000 - 0.3) < 0.02
    assert pick_variant("patient-7", weights) == pick_variant("patient-7", dict(reversed(weights.items())))
    assert pick_variant("x", {"champion": 0.0, "challenger": 1.0}) == "challenger"


def test_router_config_needs_a_positive_weight() -> None:
    with pytest.raises(ValueError, match="positive weight"):
        RouterConfig(variants={"champion": {"weight": 0, "tabular": "champion", "note": "champion"}})


def test_serve_config_yaml_builds_this_application() -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "serve" / "config.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    apps = {a["name"]: a for a in config["applications"]}
    assert set(apps) == {"mediscale", "dashboard"}
    # The prediction app first: monitor/service.py reads the Router's weights from applications[0].
    assert config["applications"][0]["name"] == "mediscale"
    assert apps["dashboard"]["import_path"] == "monitor.page:build_app"
    assert apps["dashboard"]["route_prefix"] == "/dashboard"
    app = apps["mediscale"]
    assert app["import_path"] == "serve.app:build_app"
    names = {d["name"] for d in app["deployments"]}
    assert names == {"TabularScorer", "NoteScorer", "Router"}
    RouterConfig.model_validate(next(d for d in app["deployments"] if d["name"] == "Router")["user_config"])
