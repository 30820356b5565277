"""The application's Prometheus metrics end to end: real traffic to a deployed application (two
variants, shadow scoring, feedback), then Ray's metrics export endpoint scraped over HTTP, and a
real Prometheus server scraping it and answering PromQL.

The export endpoints are read from the cluster itself: `ray.nodes()` gives each live node's
address and `MetricsExportPort` (the same targets Ray writes to
`<session>/metrics/prom_metrics_service_discovery.json`), so the session's Ray cluster needs no
fixed port. Ray exports with a delay of a few seconds: every check polls.
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prerequisites import missing
from serving import app_config, auth, deploy

from serve import metrics
from serve.records import risk_band

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # kuberay/ is repository tooling, not an installed package

APP = "metrics-app"
VARIANTS = {
    "champion": {"weight": 0.5, "tabular": "champion", "note": "champion"},
    "challenger": {"weight": 0.5, "tabular": "challenger", "note": "challenger"},
}
ROUTER = {"variants": VARIANTS, "shadow": True, "alias_refresh_s": 1.0}
WEIGHTS = {name: spec["weight"] for name, spec in VARIANTS.items()}
NOTE = "Reports chest pain at discharge. Denies shortness of breath. Lives alone."
DRIFT_SHARE = 0.4
# Labels Ray's exporter adds to every application metric; everything else must be one of ours.
RAY_LABELS = {
    "Component",
    "NodeAddress",
    "SessionName",
    "Version",
    "WorkerId",
    "JobId",
    "application",
    "deployment",
    "replica",
    "le",
    "otel_scope_name",
    "otel_scope_schema_url",
    "otel_scope_version",
}
BOUNDED_VALUES: dict[str, Callable[[str], bool]] = {
    "variant": lambda v: v in {*VARIANTS, metrics.NO_VARIANT, "mixed"},
    "shadow_variant": lambda v: v in VARIANTS,
    "endpoint": lambda v: (
        v
        in {
            "predict",
            "predict_batch",
            "feedback",
            "feedback_correction",
            "variants",
            "predictions",
            "healthz",
            "docs",
            "metrics",
            "dashboard",
            "other",
        }
    ),  # fmt: skip
    "where": lambda v: v in {"proxy", "replica"},  # where the auth gate refused a request
    "status": lambda v: (v.isdigit() and len(v) == 3) or v in {"ok", "error"},  # HTTP or model load
    "stage": lambda v: v in metrics.STAGES,
    "band": lambda v: v in {"low", "medium", "high"},
    "outcome": lambda v: v in {"0", "1", *metrics.OUTCOMES},
    "reason": lambda v: v in {"overload", "error"},
    "model": lambda v: v in {"readmission-tabular", "readmission-notes"},
    "version": lambda v: v.isdigit(),
}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


# --------------------------------------------------------------------------- the application


@pytest.fixture(scope="module")
def app_args(registered_models: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    store = tmp_path_factory.mktemp("metrics-store") / "predictions.db"
    return {
        "tabular_model": "readmission-tabular",
        "note_model": "readmission-notes",
        "data_dir": str(registered_models["home"]),
        "store_url": f"sqlite:///{store}",
    }


@pytest.fixture(scope="module")
def monitoring_rows(app_args: dict) -> dict:
    """A drift check of the challenger and a decision in the store, as `python -m monitor` leaves
    them: the Router publishes both at its refresh."""
    from serve import control
    from serve.store import PredictionStore

    with PredictionStore(app_args["store_url"]) as store:
        control.log_event(
            store, "drift", "test drift check", {}, "test", variant="challenger", drift_share=DRIFT_SHARE
        )
        control.ensure_tables(store)
        created = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)
        row = {
            "experiment": "metrics-test",
            "as_of": store.to_db_time(created),
            "outcome": "rollback",
            "rule": "test",
            "rule_digest": "0" * 32,
            "payload": {},
            "code_version": "test",
            "created_at": store.to_db_time(created),
        }
        with store.transaction() as conn:
            decision_id = conn.execute(
                control.decisions.insert().returning(control.decisions.c.id), row
            ).scalar_one()
    return {"decision_id": int(decision_id), "created_at": created}


@pytest.fixture(scope="module")
def base_url(serve_port: int, app_args: dict, monitoring_rows: dict) -> str:
    deploy(app_config(APP, "/", app_args, ROUTER))
    return f"http://127.0.0.1:{serve_port}"


def patients_of(variant: str, n: int, prefix: str) -> list[str]:
    """Patient ids the sticky assignment sends to `variant` (so both arms surely get traffic)."""
    from serve.router import pick_variant

    out, i = [], 0
    while len(out) < n:
        pid = f"{prefix}-{i}"
        if pick_variant(pid, WEIGHTS) == variant:
            out.append(pid)
        i += 1
    return out


@pytest.fixture(scope="module")
def traffic(base_url: str, app_args: dict) -> dict:
    """Predictions for both variants (single and one mixed batch), feedback, a 404 and a 422; the
    counts every metric should then show, computed from the answers and the store."""
    from serve.store import PredictionStore

    served: list[dict] = []
    predict_ok: Counter[str] = Counter()
    patients = {v: patients_of(v, 4, f"metrics-{v}") for v in VARIANTS}
    with httpx.Client(headers=auth(), base_url=base_url, timeout=60) as http:
        for variant, pids in patients.items():
            for pid in pids[:3]:
                reply = http.post("/predict", json={"patient_id": pid, "age": 70, "clinical_note": NOTE})
                assert reply.status_code == 200, reply.text
                assert reply.json()["variant"] == variant  # sticky by patient id
                served.append(reply.json())
                predict_ok[variant] += 1
        batch = [{"patient_id": patients[v][3], "age": 55, "clinical_note": NOTE} for v in VARIANTS]
        reply = http.post("/predict/batch", json={"records": batch})
        assert reply.status_code == 200, reply.text
        served += reply.json()["predictions"]
        feedback: Counter[tuple[str, str]] = Counter()
        for body, outcome in zip(served[:1] + served[3:4], (True, False), strict=True):
            ok = http.post("/feedback", json={"request_id": body["request_id"], "outcome": outcome})
            assert ok.status_code == 200, ok.text
            feedback[(body["variant"], "1" if outcome else "0")] += 1
        assert http.post("/feedback", json={"request_id": "never-seen", "outcome": True}).status_code == 404
        assert http.post("/predict", json={"age": "old"}).status_code == 422
        assert (
            http.post("/predict", json={"age": 70}, headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
    ids = [p["request_id"] for p in served]
    with PredictionStore(app_args["store_url"]) as store:
        deadline = time.time() + 60
        while time.time() < deadline and any(store.get(i)["shadow"] is None for i in ids):
            time.sleep(0.5)
        assert all(store.get(i)["shadow"] is not None for i in ids), "shadow score never logged"
    return {
        "served": served,
        "predict_ok": predict_ok,
        "feedback": feedback,
        "patients": [pid for pids in patients.values() for pid in pids],
    }


def stored(store_url: str) -> dict:
    """What the risk, band, shadow and feedback metrics should count: every row in the store (so
    the expectations hold whatever else this module's tests sent, in any order)."""
    from serve.store import PredictionStore

    with PredictionStore(store_url) as store:
        frame = store.joined()
    shadowed = frame[frame["shadow_risk"].notna()]
    labelled = frame[frame["outcome"].notna()]
    return {
        "by_variant": Counter(frame["variant"]),
        "bands": Counter(zip(frame["variant"], frame["risk_band"], strict=True)),
        "shadowed": Counter(shadowed["variant"]),
        "disagreements": Counter(
            v
            for v, r, band in zip(
                shadowed["variant"], shadowed["shadow_risk"], shadowed["risk_band"], strict=True
            )
            if risk_band(r, 0.10, 0.25) != band
        ),
        "feedback": Counter(
            (v, "1" if bool(o) else "0")
            for v, o in zip(labelled["variant"], labelled["outcome"], strict=True)
        ),
    }


# --------------------------------------------------------------------------- scraping


def export_targets() -> list[str]:
    """host:port of every live node's metrics export (what Prometheus service discovery gets)."""
    import ray

    targets = [
        f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}"
        for n in ray.nodes()
        if n.get("Alive") and n.get("MetricsExportPort")
    ]
    assert targets, "no node exports metrics"
    return targets


def scrape() -> list[Sample]:
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for target in export_targets():
        text = httpx.get(f"http://{target}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            out += [Sample(s.name, dict(s.labels), s.value) for s in family.samples]
    return out


def total(samples: list[Sample], name: str, **labels: str) -> float | None:
    """Sum over this application's series of `name` matching `labels`; None when there is none."""
    found = [
        s.value
        for s in samples
        if s.name == name
        and s.labels.get("application") == APP
        and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(found) if found else None


def eventually(check: Callable[[list[Sample]], None], timeout: float = 90.0) -> list[Sample]:
    """Scrape until `check` passes (Ray exports every few seconds); its last failure otherwise."""
    deadline = time.time() + timeout
    while True:
        samples = scrape()
        try:
            check(samples)
            return samples
        except AssertionError:
            if time.time() > deadline:
                raise
            time.sleep(1.0)


def ray_(definition: metrics.Definition, suffix: str = "") -> str:
    return metrics.RAY_PREFIX + definition.name + suffix


# --------------------------------------------------------------------------- (a) the export endpoint


def test_every_metric_is_exported_with_bounded_labels(
    traffic: dict, monitoring_rows: dict, app_args: dict
) -> None:
    other = {"champion": "challenger", "challenger": "champion"}
    expected: dict = {}

    def check(samples: list[Sample]) -> None:
        expected.update(stored(app_args["store_url"]))
        by_variant = expected["by_variant"]
        requests = ray_(metrics.REQUESTS, "_total")
        for variant in VARIANTS:
            assert (
                total(samples, requests, endpoint="predict", variant=variant, status="200")
                == (traffic["predict_ok"][variant])
            ), variant
            assert (
                total(samples, ray_(metrics.REQUEST_LATENCY, "_count"), endpoint="predict", variant=variant)
                == traffic["predict_ok"][variant]
            )
        assert total(samples, requests, endpoint="predict_batch", variant="mixed", status="200") == 1
        assert total(samples, requests, endpoint="predict", variant="none", status="422") == 1
        assert total(samples, requests, endpoint="feedback", variant="none", status="404") == 1
        assert total(samples, requests, endpoint="feedback", status="200") == 2
        for variant in VARIANTS:
            for stage in metrics.STAGES:
                count = total(samples, ray_(metrics.STAGE_LATENCY, "_count"), variant=variant, stage=stage)
                assert count is not None and count > 0, (variant, stage)
            assert total(samples, ray_(metrics.RISK, "_count"), variant=variant) == by_variant[variant]
            assert (
                total(samples, ray_(metrics.RISK, "_bucket"), variant=variant, le="1.0")
                == by_variant[variant]
            )
            for band in ("low", "medium", "high"):
                expected_n = expected["bands"][(variant, band)] or None
                assert (
                    total(samples, ray_(metrics.PREDICTIONS, "_total"), variant=variant, band=band)
                    == expected_n
                )
            pair = {"variant": variant, "shadow_variant": other[variant]}
            assert expected["shadowed"][variant] == by_variant[variant]  # shadow on: every record
            assert total(samples, ray_(metrics.SHADOW_SCORES, "_total"), **pair) == by_variant[variant]
            assert total(samples, ray_(metrics.SHADOW_DIFFERENCE, "_count"), **pair) == by_variant[variant]
            assert total(samples, ray_(metrics.SHADOW_BAND_DISAGREEMENTS, "_total"), **pair) == (
                expected["disagreements"][variant] or None
            )
        assert expected["feedback"] == traffic["feedback"]
        for (variant, outcome), n in traffic["feedback"].items():
            assert total(samples, ray_(metrics.FEEDBACK, "_total"), variant=variant, outcome=outcome) == n
        for model in ("readmission-tabular", "readmission-notes"):
            for version in ("1", "2"):
                loads = total(samples, ray_(metrics.MODEL_LOADS, "_total"), model=model, version=version)
                assert loads is not None and loads >= 1, (model, version)
            assert (total(samples, ray_(metrics.MODEL_LOAD_SECONDS, "_count"), model=model) or 0) >= 2
        drift = {
            s.labels["variant"]: s.value
            for s in samples
            if s.name == ray_(metrics.DRIFT_SHARE) and s.labels.get("application") == APP
        }
        assert drift == {"challenger": DRIFT_SHARE}
        outcomes = {
            s.labels["outcome"]: s.value
            for s in samples
            if s.name == ray_(metrics.DECISION_OUTCOME) and s.labels.get("application") == APP
        }
        assert outcomes == {o: float(o == "rollback") for o in metrics.OUTCOMES}
        ids = {
            s.value
            for s in samples
            if s.name == ray_(metrics.DECISION_ID) and s.labels.get("application") == APP
        }
        assert ids == {monitoring_rows["decision_id"]}
        times = {
            s.value
            for s in samples
            if s.name == ray_(metrics.DECISION_TIME) and s.labels.get("application") == APP
        }
        assert times == {monitoring_rows["created_at"].timestamp()}

    samples = eventually(check)
    ours = [s for s in samples if s.name in metrics.exported_names()]
    # Other applications of this test session (a shadow-scoring app in another module) export the
    # same names: which names exist is a question about this application's series only.
    names = {s.name for s in ours if s.labels.get("application") == APP}
    # Ray exports a counter once it moves: shadows are never dropped in this light traffic
    never_incremented = {ray_(metrics.SHADOW_DROPPED, "_total")}
    # Refusals are counted where they happen: in the proxy (this traffic's 401), whose series
    # carry no application label; audit rows are never lost here.
    never_incremented |= {ray_(metrics.AUTH_REFUSED, "_total"), ray_(metrics.AUDIT_FAILED, "_total")}
    if not sum(expected["disagreements"].values()):
        never_incremented.add(ray_(metrics.SHADOW_BAND_DISAGREEMENTS, "_total"))
    assert names == metrics.exported_names() - never_incremented
    secrets = {p["request_id"] for p in traffic["served"]} | set(traffic["patients"]) | {NOTE}
    definitions = {name: d for d in metrics.DEFINITIONS for name in d.exported()}
    # Bounded values are this application's (and its proxy's, which carry no application label):
    # another module's app may load a model under a test name of its own.
    for s in (s for s in ours if s.labels.get("application", APP) == APP):
        custom = set(s.labels) - RAY_LABELS
        assert custom == set(definitions[s.name].tags), (s.name, s.labels)
        for key in custom:
            assert BOUNDED_VALUES[key](s.labels[key]), (s.name, key, s.labels[key])
        assert not secrets & set(s.labels.values()), s


def test_the_ray_metrics_the_dashboard_uses_are_exported(traffic: dict) -> None:
    """kuberay/checks.py's list of Ray's own metrics (the dashboard may use only these and the
    application's) against what Ray 2.60 really exports after traffic."""
    from kuberay.checks import RAY_DASHBOARD_METRICS

    def check(samples: list[Sample]) -> None:
        names = {s.name for s in samples}
        assert set(RAY_DASHBOARD_METRICS) <= names, sorted(set(RAY_DASHBOARD_METRICS) - names)
        # the labels the dashboard groups and filters these on
        http = [s for s in samples if s.name == "ray_serve_num_http_requests_total"]
        assert any(s.labels.get("application") == APP and s.labels.get("status_code") == "200" for s in http)
        healthy = {
            s.labels.get("deployment")
            for s in samples
            if s.name == "ray_serve_deployment_replica_healthy" and s.labels.get("application") == APP
        }
        assert {"Router", "TabularScorer", "NoteScorer"} <= healthy, healthy

    eventually(check)


# --------------------------------------------------------------------------- (b) a real Prometheus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus(tmp_path: Path, traffic: dict) -> Iterator[str]:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        missing("no prometheus binary (.ci/run installs it)")
    targets = ", ".join(f"'{t}'" for t in export_targets())
    config = tmp_path / "prometheus.yml"
    config.write_text(
        # A scrape must finish within its interval: late in the whole suite Ray's endpoint carries
        # every application of the session and a 1 s timeout failed every scrape on 2 loaded cores.
        "global: {scrape_interval: 3s, scrape_timeout: 3s, evaluation_interval: 3s}\n"
        "scrape_configs:\n"
        f"  - job_name: ray\n    static_configs: [{{targets: [{targets}]}}]\n"
    )
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.time() < deadline, "prometheus did not become ready"
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def scrape_health(url: str) -> list[dict]:
    """Each target's health, last error and scrape duration (why a query came back empty)."""
    reply = httpx.get(f"{url}/api/v1/targets", timeout=10).json()
    return [
        {k: t.get(k) for k in ("scrapeUrl", "health", "lastError", "lastScrapeDuration")}
        for t in reply["data"]["activeTargets"]
    ]


def query(url: str, promql: str) -> list[dict]:
    reply = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert reply["status"] == "success", (promql, reply)
    return reply["data"]["result"]


@pytest.mark.slow
def test_prometheus_scrapes_a_per_variant_request_rate(prometheus: str, base_url: str) -> None:
    rate = (
        f'sum by (variant) (rate(ray_mediscale_requests_total{{application="{APP}", '
        f'endpoint="predict_batch", variant=~"champion|challenger", status="200"}}[1m]))'
    )
    patients = {v: patients_of(v, 1, f"prom-{v}")[0] for v in VARIANTS}
    rates: dict[str, float] = {}
    # Ray exports every few seconds and Prometheus needs two samples in the window; a loaded CI
    # machine (the whole suite on 2 cores) once gave none within 120 s.
    deadline = time.time() + 300
    with httpx.Client(headers=auth(), base_url=base_url, timeout=60) as http:
        while time.time() < deadline:
            for pid in patients.values():  # steady traffic while Prometheus takes its samples
                # one-record batches: the other test's exact /predict counts stay exact in any order
                reply = http.post("/predict/batch", json={"records": [{"patient_id": pid, "age": 60}]})
                assert reply.status_code == 200, reply.text
            rates = {r["metric"].get("variant", ""): float(r["value"][1]) for r in query(prometheus, rate)}
            if set(rates) == set(VARIANTS) and all(v > 0 for v in rates.values()):
                break
            time.sleep(1.0)
    assert set(rates) == set(VARIANTS) and all(v > 0 and math.isfinite(v) for v in rates.values()), (
        rates,
        scrape_health(prometheus),
    )
    p95 = query(
        prometheus,
        "histogram_quantile(0.95, sum by (le, variant, stage) "
        f'(rate(ray_mediscale_stage_latency_seconds_bucket{{application="{APP}"}}[1m])))',
    )
    stages = {
        (r["metric"]["variant"], r["metric"]["stage"]) for r in p95 if math.isfinite(float(r["value"][1]))
    }
    assert {(v, s) for v in VARIANTS for s in ("tabular", "combine", "store")} <= stages, stages


@pytest.mark.slow
def test_every_dashboard_query_runs_on_prometheus(prometheus: str, traffic: dict) -> None:
    """Each PromQL of the Grafana dashboard parses and runs on a real Prometheus 2.x (Grafana's
    variables replaced by what Grafana would put there)."""
    from kuberay.checks import DASHBOARD_JSON, dashboard_queries

    queries = dashboard_queries(DASHBOARD_JSON)
    assert len(queries) >= 10
    for title, expr in queries:
        concrete = (
            expr.replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$__interval", "15s")
            .replace("$application", ".*")
            .replace("$variant", ".*")
        )
        assert "$" not in concrete, (title, expr)
        query(prometheus, concrete)


# --------------------------------------------------------------------------- no cluster needed


def test_recording_never_raises_when_metrics_break(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def inc(self, *a, **k):
            raise RuntimeError("exporter down")

        observe = set = inc

    monkeypatch.setattr(metrics, "_objects", {d.name: Broken() for d in metrics.DEFINITIONS})
    metrics.request_done("predict", "champion", 200, 0.01)
    metrics.prediction("champion", 0.3, "high")
    metrics.shadow("champion", "challenger", 0.3, 0.1, False)
    metrics.shadow_dropped("overload", 3)
    metrics.feedback("champion", True)
    metrics.model_load("readmission-tabular", "1", 1.0, ok=True)
    metrics.drift_share("challenger", 0.2)
    metrics.last_decision(3, "promote", datetime.now(UTC))
    with (
        pytest.raises(ValueError, match="the block's own error passes through"),
        metrics.stage("champion", "tabular"),
    ):
        raise ValueError("the block's own error passes through")

    def cannot_create(definition):
        raise RuntimeError("no Ray worker")

    monkeypatch.setattr(metrics, "_objects", {})
    monkeypatch.setattr(metrics, "_create", cannot_create)
    metrics.request_done("predict", None, 503, 0.01)
    assert all(isinstance(o, metrics._Unavailable) for o in metrics._objects.values())


def test_exported_names_follow_prometheus_conventions() -> None:
    names = metrics.exported_names()
    assert "ray_mediscale_requests_total" in names
    assert {"ray_mediscale_risk_bucket", "ray_mediscale_risk_sum", "ray_mediscale_risk_count"} <= names
    assert "ray_mediscale_drift_share" in names
    assert all(d.name.startswith(metrics.PREFIX) for d in metrics.DEFINITIONS)
    assert len({d.name for d in metrics.DEFINITIONS}) == len(metrics.DEFINITIONS)
    reserved = {"deployment", "replica", "application", "le"}
    assert not any(reserved & set(d.tags) for d in metrics.DEFINITIONS)
    assert all(0 < b <= 1 for b in metrics.RISK_BUCKETS) and metrics.RISK_BUCKETS[-1] == 1.0


def test_endpoint_labels_are_bounded() -> None:
    from serve.router import endpoint_name

    assert endpoint_name("/predict") == "predict"
    assert endpoint_name("/mediscale/predict/batch/") == "predict_batch"
    assert endpoint_name("/feedback") == "feedback"
    assert endpoint_name("/predict/p-123") == "other"  # ids in a path never become a label
