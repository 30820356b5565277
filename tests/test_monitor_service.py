"""The decision loop end to end against the real Serve application: predictions over HTTP with
patient ids (served + shadow), outcomes posted to /feedback, then `python -m monitor decide
--as-of ... --apply` as a user runs it, and the service's next answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving import app_config, auth, deploy

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
EVEN = {
    "champion": {"weight": 0.5, "tabular": "champion"},
    "challenger": {"weight": 0.5, "tabular": "challenger"},
}
ROUTER = {"variants": EVEN, "shadow": True, "alias_refresh_s": 1.0}
# A rule declared for this test: fewer labels before a decision than production's monitor/rule.yaml.
RULE = {"min_labels": 200, "min_events": 20, "cs_n_opt": 800, "max_labels": 3000, "looks": 6}


@pytest.fixture(scope="module")
def records(synthetic_raw: Path) -> list[dict]:
    from data.replay import raw_records

    return [r["record"] for r in raw_records(str(synthetic_raw), limit=600)]


@pytest.fixture(scope="module")
def rule_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import yaml

    path = tmp_path_factory.mktemp("rule") / "rule.yaml"
    path.write_text(yaml.safe_dump(RULE))
    return path


@pytest.fixture(scope="module")
def env(registered_models: dict) -> dict:
    return {
        **os.environ,
        "MEDISCALE_DATA_DIR": str(registered_models["home"]),
        "MLFLOW_TRACKING_URI": "",
        "MEDISCALE_SERVICE_URL": "",
    }


def _app(serve_port: int, name: str, registered_models: dict, store: Path, router: dict) -> str:
    args = {
        "tabular_model": "readmission-tabular",
        "note_model": "readmission-notes",
        "data_dir": str(registered_models["home"]),
        "store_url": f"sqlite:///{store}",
    }
    deploy(app_config(name, f"/{name}", args, router))
    return f"http://127.0.0.1:{serve_port}/{name}"


def _predict(url: str, records: list[dict], prefix: str) -> list[dict]:
    """Each record as a new patient `prefix-i`, in batches, with request ids `prefix-b<k>-<i>`."""
    out = []
    with httpx.Client(headers=auth(), timeout=120) as http:
        for start in range(0, len(records), 200):
            chunk = [
                {**r, "patient_id": f"{prefix}-{start + i}"}
                for i, r in enumerate(records[start : start + 200])
            ]
            reply = http.post(
                f"{url}/predict/batch",
                json={"records": chunk},
                headers={"x-request-id": f"{prefix}-b{start}"},
            )
            assert reply.status_code == 200, reply.text[:300]
            out.extend(reply.json()["predictions"])
    return out


def _paired(store_url: str, request_ids: list[str], timeout: float = 120) -> dict[str, dict]:
    """Wait for every shadow score, then {request_id: {variant: risk}} for both variants."""
    from serve.store import PredictionStore

    with PredictionStore(store_url) as store:
        deadline = time.time() + timeout
        while True:
            frame = store.joined()
            frame = frame[frame["request_id"].isin(request_ids)]
            if frame["shadow_risk"].notna().sum() == len(request_ids) or time.time() > deadline:
                break
            time.sleep(1)
    assert frame["shadow_risk"].notna().sum() == len(request_ids)
    return {
        row.request_id: {row.variant: row.risk, row.shadow_variant: row.shadow_risk}
        for row in frame.itertuples()
    }


def _outcomes(pairs: dict[str, dict], better: str | None, seed: int) -> dict[str, bool]:
    """Outcomes drawn so that `better` is truly better (the truth lies beyond it, seen from the
    other model, centred so its calibration holds), or, with None, so that both are equal
    (the truth is their midpoint: the expected Brier difference is exactly 0)."""
    rng = np.random.default_rng(seed)
    ids = sorted(pairs)
    p0 = np.array([pairs[i]["champion"] for i in ids])
    p1 = np.array([pairs[i]["challenger"] for i in ids])
    if better is None:
        truth = (p0 + p1) / 2
    else:
        good, bad = (p1, p0) if better == "challenger" else (p0, p1)
        gap = good - bad
        truth = good + 3 * (gap - gap.mean())
    truth = np.clip(truth, 0.005, 0.995)
    return dict(zip(ids, (rng.random(len(ids)) < truth).tolist(), strict=True))


def _feedback(url: str, outcomes: dict[str, bool]) -> None:
    def post(item):
        rid, outcome = item
        with httpx.Client(headers=auth(), timeout=60) as http:
            return http.post(f"{url}/feedback", json={"request_id": rid, "outcome": outcome}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, outcomes.items()))
    assert set(statuses) == {200}


def _monitor(env: dict, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "monitor", *args, "--json", "-"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _matured_at(moment: datetime) -> datetime:
    return moment + timedelta(days=30, seconds=1)


def _after_maturity(moment: datetime) -> str:
    return _matured_at(moment).isoformat()


def test_equal_models_keep_testing_through_many_looks(
    serve_port: int, registered_models: dict, records: list[dict], rule_file: Path, env: dict, tmp_path: Path
) -> None:
    from monitor.decide import decide, read_rule
    from monitor.service import from_service
    from serve.store import PredictionStore

    store = tmp_path / "equal.db"
    url = _app(serve_port, "equal", registered_models, store, ROUTER)
    try:
        waves = []
        for k in range(5):  # five waves of patients, a second apart: five looks, each seeing one more
            served = _predict(url, records[k * 120 : (k + 1) * 120], f"eq{k}")
            waves.append(datetime.now(UTC))
            pairs = _paired(f"sqlite:///{store}", [p["request_id"] for p in served])
            _feedback(url, _outcomes(pairs, None, seed=k))
            time.sleep(1.0)
        rule, routing = read_rule(rule_file), from_service(url)
        with PredictionStore(f"sqlite:///{store}") as db:
            looks = [decide(db, routing, rule, as_of=_matured_at(w)) for w in waves]
        assert [d.figures["labelled"] for d in looks] == sorted({d.figures["labelled"] for d in looks})
        assert looks[-1].figures["labelled"] >= 500 and looks[-1].figures["paired"]
        assert [d.outcome for d in looks] == ["keep_testing"] * 5, [d.reasons for d in looks]
        again = _monitor(
            env, "decide", "--as-of", _after_maturity(waves[-1]), "--rule", str(rule_file),
            "--store-url", f"sqlite:///{store}", "--service", url, "--no-tag",
        )  # fmt: skip
        assert again["id"] == looks[-1].id and again["outcome"] == "keep_testing"
        report = _monitor(
            env, "report", "--as-of", _after_maturity(waves[-1]), "--store-url", f"sqlite:///{store}",
            "--service", url, "--n-boot", "50",
        )  # fmt: skip
        assert report["traffic"]["sample_ratio"]["p_value"] > 0.001
        assert report["paired"]["patients"] >= 500
    finally:
        deploy(remove="equal")


def test_decide_apply_promotes_the_better_challenger_then_rolls_back_a_worse_one(
    serve_port: int,
    registered_models: dict,
    records: list[dict],
    rule_file: Path,
    env: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ml import registry

    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(registered_models["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    store = tmp_path / "loop.db"
    store_url = f"sqlite:///{store}"
    url = _app(serve_port, "loop", registered_models, store, ROUTER)
    common = ["--rule", str(rule_file), "--store-url", store_url, "--service", url, "--applied-by", "ml-lead"]
    try:
        served = _predict(url, records, "up")
        made = datetime.now(UTC)
        assert {p["variant"] for p in served} == {"champion", "challenger"}
        _feedback(url, _outcomes(_paired(store_url, [p["request_id"] for p in served]), "challenger", seed=1))

        promoted = _monitor(env, "decide", "--as-of", _after_maturity(made), "--apply", *common)
        assert promoted["outcome"] == "promote", promoted["reasons"]
        assert promoted["apply"]["changed"] is True
        again = _monitor(env, "decide", "--as-of", _after_maturity(made), "--apply", *common)
        assert again["id"] == promoted["id"] and again["apply"]["changed"] is False
        with httpx.Client(headers=auth(), timeout=60) as http:
            deadline = time.time() + 30
            while time.time() < deadline:
                body = http.get(f"{url}/variants").json()
                if body["variants"]["champion"]["versions"]["tabular"] == "2":
                    break
                time.sleep(0.5)
            assert body["variants"]["champion"]["versions"]["tabular"] == "2"
            pid = body["replica"]["pid"]
            after = _predict(url, records[:100], "next")
            assert {p["model_versions"]["tabular"] for p in after if p["variant"] == "champion"} == {"2"}

            # The old champion comes back as a challenger and is worse: roll it back, in place.
            deploy(
                app_config(
                    "loop",
                    "/loop",
                    {
                        "tabular_model": "readmission-tabular",
                        "note_model": "readmission-notes",
                        "data_dir": str(registered_models["home"]),
                        "store_url": store_url,
                    },
                    {**ROUTER, "variants": {**EVEN, "challenger": {"weight": 0.5, "tabular": "1"}}},
                )
            )
            served = _predict(url, records, "down")
            made = datetime.now(UTC)
            pairs = _paired(store_url, [p["request_id"] for p in served])
            _feedback(url, _outcomes(pairs, "champion", seed=2))
            rolled = _monitor(env, "decide", "--as-of", _after_maturity(made), "--apply", *common)
            assert rolled["outcome"] == "rollback", rolled["reasons"]
            assert rolled["experiment"] == "champion[tabular:2] vs challenger[tabular:1]"
            deadline = time.time() + 30
            while time.time() < deadline:
                body = http.get(f"{url}/variants").json()
                if body["variants"]["challenger"]["effective_weight"] == 0.0:
                    break
                time.sleep(0.5)
            challenger = body["variants"]["challenger"]
            assert challenger["effective_weight"] == 0.0 and challenger["weight"] == 0.5
            assert challenger["override"]["decision_id"] == rolled["id"] and challenger["override"]["applies"]
            assert body["replica"]["pid"] == pid  # no restart
            last = _predict(url, records[:150], "last")
            assert {p["variant"] for p in last} == {"champion"}
        history = _monitor(env, "history", "--store-url", store_url)
        assert [d["outcome"] for d in history["decisions"]][:2] == ["rollback", "promote"]
        assert all(d["applied"]["by"] == "ml-lead" for d in history["decisions"][:2])
        registry.configure()
        tags = registry._client().get_model_version("readmission-tabular", "1").tags
        assert json.loads(tags["mediscale.decision.last"])["outcome"] == "rollback"
    finally:
        deploy(remove="loop")
        registry.configure()  # leave the session's registry as other modules expect it
        if registry.version_for("readmission-tabular", "champion") != "1":
            registry.rollback("readmission-tabular")
