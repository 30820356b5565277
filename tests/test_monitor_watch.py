"""`python -m monitor watch`: the pieces of a pass (fast tier) and a whole pass end to end."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from serving import auth

from monitor.k8s import SubmitError, rayjob_body
from monitor.watch import (
    LocalRunner,
    WatchConfig,
    WatchError,
    challenger_share_weight,
    command_argv,
    newest_feature_folder,
)

REPO = Path(__file__).resolve().parents[1]


def test_packaged_config_retrains_both_models_and_never_names_promotion() -> None:
    config = WatchConfig.load()
    assert {spec.component for spec in config.train} == {"tabular", "note"}
    assert all("--register" in spec.command for spec in config.train)
    assert all("promote" not in spec.command for spec in config.train)
    assert 0 < config.challenger_share < 0.5


def test_config_refuses_unknown_keys_and_bad_shares(tmp_path: Path) -> None:
    path = tmp_path / "watch.yaml"
    path.write_text("challenger_shares: 0.1\n")
    with pytest.raises(ValueError, match="challenger_shares"):
        WatchConfig.load(path)
    path.write_text("challenger_share: 1.5\n")
    with pytest.raises(ValueError, match="challenger_share"):
        WatchConfig.load(path)
    with pytest.raises(WatchError, match="missing.yaml"):
        WatchConfig.load(tmp_path / "missing.yaml")


def _folder(root: Path, name: str, created: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "manifest.json").write_text(json.dumps({"created_at": created}))


def test_newest_feature_folder_is_the_one_built_last(tmp_path: Path) -> None:
    _folder(tmp_path, "2026-10", "2026-10-01T00:00:00+00:00")
    _folder(tmp_path, "2026-11", "2026-11-01T00:00:00+00:00")
    _folder(tmp_path, "a-late-name-built-early", "2026-09-01T00:00:00+00:00")
    assert newest_feature_folder(str(tmp_path)) == f"{tmp_path}/2026-11"
    # A feature folder itself is used as it is.
    assert newest_feature_folder(str(tmp_path / "2026-10")) == str(tmp_path / "2026-10")
    with pytest.raises(WatchError, match="neither a feature folder"):
        newest_feature_folder(str(tmp_path / "2026-10" / ".." / "nothing-here"))


def test_challenger_share_is_a_share_of_all_traffic() -> None:
    weight = challenger_share_weight(0.1, {"champion": 0.9, "challenger": 0.0}, "challenger")
    assert weight == pytest.approx(0.1)
    weight = challenger_share_weight(0.1, {"champion": 1.0, "challenger": 0.5}, "challenger")
    assert weight / (weight + 1.0) == pytest.approx(0.1)
    with pytest.raises(WatchError, match="champion"):
        challenger_share_weight(0.1, {"champion": 0.0, "challenger": 1.0}, "challenger")


def test_commands_run_with_this_interpreter_and_quote_the_folder() -> None:
    argv = command_argv(
        "python -m ml train-tabular --features {features} --register", "/data/feature sets/new"
    )
    assert argv[0] == sys.executable
    assert argv[1:] == ["-m", "ml", "train-tabular", "--features", "/data/feature sets/new", "--register"]


def test_local_runner_reports_a_failed_command_without_its_output() -> None:
    code = "import sys; print('patient 123 secret'); sys.exit(3)"
    result = LocalRunner().run("tabular", [sys.executable, "-c", code], {}, timeout_s=60)
    assert not result.ok and result.status == "FAILED" and result.message == "exit code 3"
    ok = LocalRunner().run("tabular", [sys.executable, "-c", "pass"], {}, timeout_s=60)
    assert ok.ok and ok.status == "SUCCEEDED"


def test_the_cronjob_submits_the_watch_rayjob_under_a_generated_name() -> None:
    body = rayjob_body((REPO / "kuberay" / "rayjob-watch.yaml").read_text())
    assert body["metadata"]["generateName"] == "mediscale-monitor-watch-"
    assert "name" not in body["metadata"]
    assert "monitor watch" in body["spec"]["entrypoint"]
    with pytest.raises(SubmitError, match="RayJob"):
        rayjob_body("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")


def test_a_pass_registers_pending_versions_and_says_approval_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fast tier, real registry and store, fake jobs and service: the new version stays pending (no
    alias moves), the result names the approve command, and the traffic override only applies once
    the challenger serves the new version. A job that registers nothing is a failed retrain."""
    from types import SimpleNamespace

    from ml import registry
    from monitor import watch
    from serve import control
    from serve.store import PredictionStore

    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(tmp_path / "home"))
    # Set (empty: "unset" to Settings), not deleted: mlflow exports the local URI into the
    # environment, and a Ray cluster started later by another test must not inherit it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    registry.configure()
    client = registry._client()
    files = tmp_path / "files"
    files.mkdir()
    client.create_registered_model("readmission-tabular")
    client.create_model_version("readmission-tabular", source=str(files), tags={"approval": "bootstrap"})
    for alias in ("champion", "challenger"):
        client.set_registered_model_alias("readmission-tabular", alias, "1")
    features = tmp_path / "features"
    features.mkdir()
    (features / "manifest.json").write_text("{}")

    class Job:
        def __init__(self, registers: bool) -> None:
            self.registers = registers

        def run(self, component, argv, env, timeout_s):  # a training job's `--register`, in short
            if self.registers:
                client.create_model_version(
                    "readmission-tabular", source=str(files), tags={"approval": "pending"}
                )
            return watch.JobResult(component, "fake", "SUCCEEDED", 0.1)

    monkeypatch.setattr(
        watch,
        "_service_variants",
        lambda url: {
            "champion": {"weight": 0.9, "tabular": "champion"},
            "challenger": {"weight": 0.1, "tabular": "challenger"},
        },
    )
    config = watch.WatchConfig.model_validate(
        {"train": [{"component": "tabular", "model": "readmission-tabular", "command": "python -m ml x"}]}
    )

    def drift(*args, **kwargs):
        return SimpleNamespace(drift_share=0.9, event_id=None, drifted_columns=[])

    with PredictionStore(f"sqlite:///{tmp_path / 'predictions.db'}") as store:
        run = {
            "features": str(features),
            "service_url": "http://unused",
            "drift_check": drift,
            "threshold": 0.5,
        }
        forgot = watch.run_pass(store, config, runner=Job(registers=False), **run)
        assert forgot.outcome == "retrain_failed" and "registered no new version" in forgot.reason

        result = watch.run_pass(store, config, runner=Job(registers=True), **run)
        assert result.outcome == "retrained" and result.new_versions == {"tabular": "2"}
        assert result.pending_approval == {"readmission-tabular": "2"}
        assert result.approve_commands == [
            "python -m ml registry approve readmission-tabular 2 --by NAME --reason TEXT"
        ]
        assert "APPROVAL NEEDED" in result.reason and "never approved or promoted" in result.reason
        assert registry.version_for("readmission-tabular", "challenger") == "1"  # nothing exposed
        assert result.as_dict()["pending_approval"] == {"readmission-tabular": "2"}  # in the JSON

        overrides = control.latest_overrides(store)
        assert overrides["challenger"].model_versions == {"tabular": "2"}
        assert "once approved" in overrides["challenger"].reason
        configured = {"champion": 0.9, "challenger": 0.1}
        before = control.effective_weights(configured, {"challenger": {"tabular": "1"}}, overrides)
        assert before == configured  # the override waits for the approved version
        [event] = control.events(store, kind="watch", limit=1)
        assert event.payload["pending_approval"] == {"readmission-tabular": "2"}


# --------------------------------------------------------------------------- a whole pass


def _serve_app(serve_port: int, home: Path, store: Path) -> str:
    from serving import app_config, deploy

    router = {
        "variants": {
            "champion": {"weight": 0.9, "tabular": "champion"},
            "challenger": {"weight": 0.1, "tabular": "challenger"},
        },
        "shadow": False,
        "alias_refresh_s": 1.0,
    }
    args = {
        "tabular_model": "readmission-tabular",
        "note_model": "readmission-notes",
        "data_dir": str(home),
        "store_url": f"sqlite:///{store}",
    }
    deploy(app_config("watched", "/watched", args, router))
    return f"http://127.0.0.1:{serve_port}/watched"


def _send(url: str, records: list[dict], prefix: str) -> None:
    import httpx

    with httpx.Client(headers=auth(), timeout=120) as http:
        for start in range(0, len(records), 100):
            chunk = [
                {**r, "patient_id": f"{prefix}-{start + i}"}
                for i, r in enumerate(records[start : start + 100])
            ]
            reply = http.post(f"{url}/predict/batch", json={"records": chunk})
            assert reply.status_code == 200, reply.text[:300]


def _aliases(env: dict) -> dict:
    """The tabular model's champion and challenger versions in the registry `env` points at (a
    subprocess: this process's MLflow client stays on the session's registry)."""
    import subprocess

    code = (
        "import json; from ml import registry; "
        "print(json.dumps({a: registry.version_for('readmission-tabular', a) "
        "for a in ('champion', 'challenger')}))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _watch(env: dict, *args: str) -> dict:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "monitor", "watch", "--runner", "local", "--json", "-", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_a_lab_and_vitals_outage_retrains_a_challenger_that_waits_for_approval_and_is_never_promoted(
    registered_models: dict,
    synthetic_raw: Path,
    synthetic_features: Path,
    serve_port: int,
    tmp_path: Path,
) -> None:
    """Normal traffic: the pass finds no drift and changes nothing. Then the lab and vitals feeds
    stop: the pass retrains (a real training run, registered pending approval) and says approval
    is needed; nothing new is served until `ml registry approve`, after which the new version is
    the challenger with 10% of traffic in the running service; champion stays, and both passes
    and the approval are in the audit table."""
    import os
    import shutil
    from datetime import UTC, datetime

    import httpx
    import ray

    from data.replay import raw_records
    from serve import control
    from serve.store import PredictionStore

    # A registry of our own (a copy): this test moves the challenger alias.
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(registered_models["home"] / "mlflow.db", home / "mlflow.db")
    store_path = tmp_path / "predictions.db"
    env = {
        **os.environ,
        "MEDISCALE_DATA_DIR": str(home),
        "MLFLOW_TRACKING_URI": "",
        "MEDISCALE_STORE_URL": f"sqlite:///{store_path}",
        "MEDISCALE_SERVICE_URL": "",
        # Training jobs join this session's cluster instead of starting another.
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
    }
    config = tmp_path / "watch.yaml"
    config.write_text(
        "challenger_share: 0.1\n"
        "train:\n"
        "  - component: tabular\n"
        "    model: readmission-tabular\n"
        "    command: python -m ml train-tabular --features {features} --register --n-boot 20 "
        "--max-rounds 60 --learning-rate 0.1\n"
    )
    url = _serve_app(serve_port, home, store_path)
    records = [r["record"] for r in raw_records(str(synthetic_raw), split="test", limit=500)]
    common = ["--config", str(config), "--features", str(synthetic_features), "--service", url]

    start = datetime.now(UTC)
    _send(url, records[:250], "steady")
    before = _aliases(env)
    steady = _watch(env, *common, "--since", start.isoformat())
    assert steady["outcome"] == "no_drift", steady
    assert steady["drift_share"] <= steady["threshold"]
    assert steady["jobs"] == [] and steady["override_id"] is None

    # The lab and vitals feeds stop: the same patients' records arrive without labs and vitals.
    outage_start = datetime.now(UTC)
    outage = [
        {k: v for k, v in r.items() if k not in {"labs", "vitals", "heart_rate", "blood_pressure"}}
        for r in records[250:]
    ]
    _send(url, outage, "outage")
    retrained = _watch(env, *common, "--since", outage_start.isoformat())
    assert retrained["outcome"] == "retrained", retrained
    assert retrained["drift_share"] > retrained["threshold"]
    assert any(c.startswith(("creatinine", "heart_rate", "sbp")) for c in retrained["drifted_columns"])
    [job] = retrained["jobs"]
    assert job["status"] == "SUCCEEDED" and job["component"] == "tabular"

    new = retrained["new_versions"]["tabular"]
    assert int(new) > int(before["challenger"])
    assert _aliases(env) == before  # registered, not exposed: pending approval
    assert retrained["pending_approval"] == {"readmission-tabular": new}
    assert retrained["approve_commands"] == [
        f"python -m ml registry approve readmission-tabular {new} --by NAME --reason TEXT"
    ]
    assert "APPROVAL NEEDED" in retrained["reason"]
    assert retrained["challenger_versions"] == {"tabular": new}  # what approval will expose
    time.sleep(3)  # a few alias refreshes: the service still serves the approved challenger only
    variants = httpx.get(f"{url}/variants", headers=auth(), timeout=10).json()["variants"]
    assert variants["challenger"]["versions"]["tabular"] == before["challenger"]

    import subprocess

    approved = subprocess.run(
        [sys.executable, "-m", "ml", "registry", "approve", "readmission-tabular", new,
         "--by", "Dr Watch Test", "--reason", "retrained after the lab outage; reviewed"],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert approved.returncode == 0, approved.stderr[-2000:]
    assert f"readmission-tabular v{new} approved by Dr Watch Test" in approved.stdout
    assert "WARNING" not in approved.stderr
    after = _aliases(env)
    assert after["challenger"] == new
    assert after["champion"] == before["champion"]  # never promoted

    # The running service: the challenger serves the new version with 10% of the traffic.
    assert retrained["challenger_weight"] == pytest.approx(0.1)
    deadline = time.time() + 60
    while True:
        variants = httpx.get(f"{url}/variants", headers=auth(), timeout=10).json()["variants"]
        if (variants["challenger"]["versions"] or {}).get("tabular") == new or time.time() > deadline:
            break
        time.sleep(1)
    assert variants["challenger"]["versions"]["tabular"] == new
    share = variants["challenger"]["effective_weight"] / sum(v["effective_weight"] for v in variants.values())
    assert share == pytest.approx(0.1, abs=1e-6)
    # ... through the override the retraining pass recorded, which applies now that it serves them
    override = variants["challenger"]["override"]
    assert override["weight"] == pytest.approx(retrained["challenger_weight"]), override
    assert override["applies"] and override["versions"] == retrained["challenger_versions"], override
    assert override["reason"].startswith("monitor watch: retrained after drift share"), override

    with PredictionStore(f"sqlite:///{store_path}") as store:
        passes = control.events(store, kind="watch")
        assert [e.payload["outcome"] for e in passes] == ["retrained", "no_drift"]
        assert passes[0].model_versions == {"tabular": new}
        assert [e.id for e in control.events(store, kind="drift")][:2] == [
            retrained["drift_event_id"],
            steady["drift_event_id"],
        ]
        [approval] = control.events(store, kind="approval")
        assert approval.model_versions == {"readmission-tabular": new}
        assert approval.payload["approver"] == "Dr Watch Test"
