"""The shipped serve/config.yaml, deployed as `serve deploy` would: both applications with every
deployment option of the file (autoscaling, queue limits, CPU shares, user_configs). Only what
points at this machine is swapped: the data dir and the store (args), and the page's service URL.
The other Serve modules build their own configs; this one proves the file itself runs."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import httpx
import pytest
import yaml
from serving import auth, deploy

pytestmark = [pytest.mark.ray, pytest.mark.slow]
CONFIG = Path(__file__).resolve().parents[1] / "serve" / "config.yaml"
EXAMPLE = {
    "patient_id": "shipped-config-1",
    "age": 67,
    "blood_pressure": 140,
    "prior_admissions_365d": 2,
    "clinical_note": "Reports chest pain at discharge. Lives alone.",
}


@pytest.fixture(scope="module")
def shipped(serve_port: int, registered_models: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """serve/config.yaml's applications, deployed; returns the file's config as read."""
    config = yaml.safe_load(CONFIG.read_text())
    store = f"sqlite:///{tmp_path_factory.mktemp('shipped') / 'predictions.db'}"
    base = f"http://127.0.0.1:{serve_port}"
    for application in copy.deepcopy(config["applications"]):
        if application["name"] == "mediscale":
            application["args"].update(data_dir=str(registered_models["home"]), store_url=store)
        else:
            application["args"].update(store_url=store, service_url=base)
        deploy(application)
    return config


def _deployment(config: dict, app: str, name: str) -> dict:
    [application] = [a for a in config["applications"] if a["name"] == app]
    return next(d for d in application["deployments"] if d["name"] == name)


def test_the_shipped_config_serves_a_prediction_and_the_dashboard(serve_port: int, shipped: dict) -> None:
    base = f"http://127.0.0.1:{serve_port}"
    with httpx.Client(base_url=base, headers=auth(), timeout=60) as client:
        deadline = time.monotonic() + 120
        while (health := client.get("/healthz")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(1)  # scorers warm the champion and challenger first
        assert health.status_code == 200, health.text
        reply = client.post("/predict", json=EXAMPLE)
        assert reply.status_code == 200, reply.text[:300]
        prediction = reply.json()
        assert prediction["variant"] in {"champion", "challenger"}
        assert 0 < prediction["risk"] < 1 and prediction["top_factors"]
        # shadow: true in the file, so the other variant scores it too (in the background)
        assert client.get(f"/predictions/{prediction['request_id']}").status_code == 200
        page = client.get("/dashboard/healthz")
        assert page.status_code == 200, page.text[:300]


def test_the_shipped_deployment_options_are_the_running_ones(shipped: dict) -> None:
    from ray import serve
    from ray.serve.context import _get_global_client

    status = serve.status().applications
    assert status["mediscale"].status == "RUNNING" and status["dashboard"].status == "RUNNING"

    live = _get_global_client().get_serve_details()["applications"]["mediscale"]["deployments"]
    for name in ("TabularScorer", "NoteScorer", "Router"):
        shipped_options = _deployment(shipped, "mediscale", name)
        running = live[name]["deployment_config"]
        assert running["max_ongoing_requests"] == shipped_options["max_ongoing_requests"], name
        assert running["max_queued_requests"] == shipped_options["max_queued_requests"], name
        scaling = running["autoscaling_config"]
        for key, value in shipped_options["autoscaling_config"].items():
            assert scaling[key] == value, (name, key)
        if "user_config" in shipped_options:
            assert running["user_config"] == shipped_options["user_config"], name
