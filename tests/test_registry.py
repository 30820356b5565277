"""Model registry on real MLflow: a local sqlite store under the data dir and a real tracking server.

Aliases follow the project's rules: a new version is pending approval and moves no alias (the
first one becomes champion and challenger, tagged bootstrap); a named person's approval makes it
challenger, champion moves only on promote (approved versions only) and goes back on rollback
(histories kept in the registry itself).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.models import infer_signature

from ml import registry
from ml.registry import CHALLENGER, CHAMPION, RegistryError

REPO_ROOT = Path(__file__).resolve().parents[1]
X = pd.DataFrame({"x": [1.0, 2.0, 3.5]})
QUIET_MLFLOW = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


class Times(mlflow.pyfunc.PythonModel):
    """A model small enough to log in milliseconds whose output still identifies it (x * k)."""

    def __init__(self, k: float) -> None:
        self.k = k

    def predict(self, context, model_input, params=None):
        return model_input["x"] * self.k


@dataclass
class Logged:
    run_id: str
    artifact_path: str
    expected: list[float]


def _log(experiment_id: str, k: float) -> Logged:
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.pyfunc.log_model(
            name="model",
            python_model=Times(k),
            signature=infer_signature(X, X["x"] * k),
            pip_requirements=["mlflow"],  # explicit: skips the slow requirement inference
        )
    return Logged(run.info.run_id, "model", (X["x"] * k).tolist())


def _point_at(mp: pytest.MonkeyPatch, data_dir: Path) -> None:
    for key, value in QUIET_MLFLOW.items():
        mp.setenv(key, value)
    mp.setenv("MEDISCALE_DATA_DIR", str(data_dir))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """One local store for the module (creating the sqlite schema costs seconds) with two logged runs."""
    data_dir = tmp_path_factory.mktemp("mlflow-local") / "data"
    with pytest.MonkeyPatch.context() as mp:
        _point_at(mp, data_dir)
        registry.configure()
        exp = registry.experiment("readmission-test")
        yield {"data_dir": data_dir, "experiment_id": exp, "v1": _log(exp, 2.0), "v2": _log(exp, 5.0)}


@pytest.fixture
def local(store: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Each test re-points MLflow at the module's local store (the server test moves it elsewhere)."""
    _point_at(monkeypatch, store["data_dir"])  # type: ignore[arg-type]
    registry.configure()
    return store


def _register_both(store: dict[str, object], name: str) -> None:
    """v1 (champion, bootstrap) and v2 approved as challenger."""
    registry.register(store["v1"].run_id, "model", name)  # type: ignore[attr-defined]
    registry.register(store["v2"].run_id, "model", name, tags={"stage": "test"})  # type: ignore[attr-defined]
    registry.approve(name, 2, "Dr Test", "second configuration")


def _predict(name: str, alias: str = CHAMPION) -> list[float]:
    return registry.load(name, alias).predict(X).tolist()


def test_import_has_no_side_effects() -> None:
    code = "import sys, ml.registry; assert 'mlflow' not in sys.modules, 'mlflow imported at import time'"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True, timeout=60)


def test_tracking_uri_defaults_to_sqlite_in_data_dir_and_env_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.tracking_uri() == f"sqlite:///{(tmp_path / 'd').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert registry.tracking_uri() == "http://mlflow.example:5000"


def test_own_default_exported_by_mlflow_does_not_count_as_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; the next data dir must still win over it.
    _point_at(monkeypatch, tmp_path / "a")
    first = registry.configure()
    assert os.environ["MLFLOW_TRACKING_URI"] == first
    monkeypatch.setenv("MEDISCALE_DATA_DIR", str(tmp_path / "b"))
    assert registry.configure() == f"sqlite:///{(tmp_path / 'b').resolve()}/mlflow.db"
    assert (tmp_path / "a").is_dir() and (tmp_path / "b").is_dir()


def test_db_and_artifacts_live_under_the_data_dir(local: dict[str, object]) -> None:
    data_dir: Path = local["data_dir"]  # type: ignore[assignment]
    assert registry.configure() == f"sqlite:///{data_dir.resolve()}/mlflow.db"
    assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == registry.tracking_uri()
    assert (data_dir / "mlflow.db").is_file()
    assert registry.experiment("readmission-test") == local["experiment_id"]  # get, not create again
    location = mlflow.get_experiment(local["experiment_id"]).artifact_location
    assert location == (data_dir.resolve() / "mlartifacts" / "readmission-test").as_uri()
    assert list((data_dir / "mlartifacts" / "readmission-test").rglob("MLmodel")), "no model artifacts"


def test_register_promote_rollback(local: dict[str, object]) -> None:
    name = "readmission-lifecycle"
    first = registry.register(local["v1"].run_id, "model", name)  # type: ignore[attr-defined]
    assert (first.version, first.aliases) == ("1", [CHALLENGER, CHAMPION])
    assert first.tags == {registry.APPROVAL_TAG: registry.BOOTSTRAP}
    assert first.run_id == local["v1"].run_id  # type: ignore[attr-defined]
    assert registry.version_for(name, CHAMPION) == registry.version_for(name, CHALLENGER) == "1"

    second = registry.register(local["v2"].run_id, "model", name, tags={"git": "abc"})  # type: ignore[attr-defined]
    assert (second.version, second.aliases) == ("2", [])
    assert second.tags == {"git": "abc", registry.APPROVAL_TAG: registry.PENDING}
    assert registry.version_for(name, CHAMPION) == registry.version_for(name, CHALLENGER) == "1"

    registry.approve(name, 2, "Dr Test", "better calibration on validation")
    assert registry.version_for(name, CHALLENGER) == "2"
    promoted = registry.promote(name, 2)
    assert promoted.version == "2" and CHAMPION in promoted.aliases
    assert registry.version_for(name, CHAMPION) == "2"
    assert mlflow.MlflowClient().get_registered_model(name).tags[registry.HISTORY_TAG] == '["1"]'

    back = registry.rollback(name)
    assert (back.version, registry.version_for(name, CHAMPION)) == ("1", "1")
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback(name)


def test_unknown_names_versions_and_aliases_are_clear_errors(local: dict[str, object]) -> None:
    name = "readmission-errors"
    registry.register(local["v1"].run_id, "model", name)  # type: ignore[attr-defined]
    with pytest.raises(
        RegistryError, match=r"unknown version '7' of model 'readmission-errors'.*versions: 1"
    ):
        registry.promote(name, "7")
    with pytest.raises(RegistryError, match="unknown version 'latest'"):
        registry.set_alias(name, "shadow", "latest")
    with pytest.raises(RegistryError, match=r"unknown model 'readmission-nope'.*readmission-errors"):
        registry.promote("readmission-nope", 1)
    with pytest.raises(RegistryError, match=r"no alias 'shadow'.*champion=v1"):
        registry.model_uri(name, "shadow")
    registry.set_alias(name, "shadow", 1)
    assert registry.model_uri(name, "shadow") == f"models:/{name}@shadow"


def test_load_round_trip_follows_the_champion(local: dict[str, object]) -> None:
    name = "readmission-roundtrip"
    _register_both(local, name)
    assert _predict(name) == local["v1"].expected  # type: ignore[attr-defined]
    assert _predict(name, CHALLENGER) == local["v2"].expected  # type: ignore[attr-defined]
    registry.promote(name, "2")
    assert _predict(name) == local["v2"].expected  # type: ignore[attr-defined]
    registry.rollback(name)
    assert _predict(name) == local["v1"].expected  # type: ignore[attr-defined]


def test_list_models_and_table(local: dict[str, object]) -> None:
    name = "readmission-listing"
    _register_both(local, name)
    infos = [i for i in registry.list_models() if i.name == name]
    assert [(i.version, i.aliases) for i in infos] == [("2", [CHALLENGER]), ("1", [CHAMPION])]
    assert infos[0].tags["stage"] == "test" and infos[0].created.startswith("20")

    table = registry.format_table(infos).splitlines()
    assert table[0].split() == ["model", "version", "aliases", "approval", "run", "created"]
    assert table[1].split()[:5] == [name, "2", CHALLENGER, "approved", local["v2"].run_id]  # type: ignore[attr-defined]
    assert table[2].split()[:5] == [name, "1", CHAMPION, "bootstrap", local["v1"].run_id]  # type: ignore[attr-defined]
    column = table[0].index("version")  # fixed width: every row's version sits under its header
    assert (table[1][column], table[2][column]) == ("2", "1")


# --------------------------------------------------------------------------- approval


def _model_tags(name: str) -> dict[str, str]:
    return dict(mlflow.MlflowClient().get_registered_model(name).tags)


def test_register_leaves_the_challenger_where_it_was_and_tags_pending(local: dict[str, object]) -> None:
    name = "readmission-pending"
    _register_both(local, name)  # v1 champion, v2 approved challenger
    third = registry.register(local["v1"].run_id, "model", name, tags={"src": "cron"})  # type: ignore[attr-defined]
    assert (third.version, third.aliases) == ("3", [])
    assert third.tags == {"src": "cron", registry.APPROVAL_TAG: registry.PENDING}
    assert (registry.version_for(name, CHAMPION), registry.version_for(name, CHALLENGER)) == ("1", "2")
    assert registry.newest_version(name).version == "3"  # type: ignore[union-attr]
    assert registry.newest_version("readmission-never-registered") is None
    with pytest.raises(RegistryError, match="set by approve/reject only"):
        registry.register(local["v1"].run_id, "model", name, tags={"approval": "approved"})  # type: ignore[attr-defined]


def test_approve_moves_the_challenger_and_records_who_when_and_why(local: dict[str, object]) -> None:
    name = "readmission-approve"
    registry.register(local["v1"].run_id, "model", name)  # type: ignore[attr-defined]
    registry.register(local["v2"].run_id, "model", name)  # type: ignore[attr-defined]
    before = datetime.now(UTC).replace(microsecond=0)
    info = registry.approve(name, "2", "  Dr Alice Smith ", " reviewed the validation report ")
    assert info.aliases == [CHALLENGER] and registry.version_for(name, CHAMPION) == "1"
    assert info.tags[registry.APPROVAL_TAG] == registry.APPROVED
    assert info.tags["approved_by"] == "Dr Alice Smith"
    assert info.tags["approval_reason"] == "reviewed the validation report"
    approved_at = datetime.fromisoformat(info.tags["approved_at"])
    assert approved_at.utcoffset() == timedelta(0) and before <= approved_at <= datetime.now(UTC)

    history = json.loads(_model_tags(name)[registry.APPROVALS_TAG])
    assert [(h["version"], h["decision"], h["by"]) for h in history] == [
        ("1", "bootstrap", "register"),
        ("2", "approved", "Dr Alice Smith"),
    ]
    assert history[-1]["at"] == info.tags["approved_at"]
    assert history[-1]["reason"] == "reviewed the validation report"
    assert _predict(name, CHALLENGER) == local["v2"].expected  # type: ignore[attr-defined]

    # Re-approving the champion's version is allowed (challenger back on it) and appended, not replaced.
    registry.approve(name, 1, "Dr Bob", "back to the champion's model")
    assert registry.version_for(name, CHALLENGER) == "1"
    assert len(registry.approvals(mlflow.MlflowClient().get_registered_model(name))) == 3


def test_approval_history_is_bounded_keeping_the_newest(
    local: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "readmission-approval-history"
    _register_both(local, name)
    monkeypatch.setattr(registry, "APPROVALS_MAX_CHARS", 600)
    for i in range(8):
        registry.approve(name, 2, f"Dr {i}", "x" * 100)
    history = registry.approvals(mlflow.MlflowClient().get_registered_model(name))
    assert 1 < len(history) < 8 and len(json.dumps(history)) <= 600
    assert (
        history[-1]["by"] == "Dr 7"
        and [h["by"] for h in history] == [f"Dr {i}" for i in range(8)][-len(history) :]
    )


def test_promote_refuses_a_version_that_was_never_approved(local: dict[str, object]) -> None:
    name = "readmission-unapproved"
    registry.register(local["v1"].run_id, "model", name)  # type: ignore[attr-defined]
    registry.register(local["v2"].run_id, "model", name)  # type: ignore[attr-defined]
    with pytest.raises(RegistryError, match=r"v2 is not approved \(approval: pending\).*approve it first"):
        registry.promote(name, 2)
    assert registry.version_for(name, CHAMPION) == "1"
    assert registry.HISTORY_TAG not in _model_tags(name)  # nothing recorded for a refused promotion
    # A version from before approvals existed (no tag at all) is refused the same way.
    mlflow.MlflowClient().delete_model_version_tag(name, "2", registry.APPROVAL_TAG)
    with pytest.raises(RegistryError, match=r"approval: none.*approve it first"):
        registry.promote(name, 2)
    # Neither alias can be moved around the audited paths.
    for alias in (CHAMPION, CHALLENGER):
        with pytest.raises(RegistryError, match="moves only through"):
            registry.set_alias(name, alias, 2)
    registry.approve(name, 2, "Dr Test", "ok")
    assert registry.promote(name, 2).version == "2"


def test_reject_blocks_approval_and_promotion_and_withdraws_a_challenger(local: dict[str, object]) -> None:
    name = "readmission-reject"
    _register_both(local, name)  # v2 is the approved challenger
    registry.register(local["v2"].run_id, "model", name)  # type: ignore[attr-defined]
    rejected = registry.reject(name, 3, "Dr Carol", "trained on the outage week")
    assert rejected.tags[registry.APPROVAL_TAG] == registry.REJECTED
    assert (rejected.tags["rejected_by"], rejected.tags["rejection_reason"]) == (
        "Dr Carol",
        "trained on the outage week",
    )
    with pytest.raises(RegistryError, match="rejected by Dr Carol.*cannot be approved"):
        registry.approve(name, 3, "Dr Dave", "looks fine to me")
    with pytest.raises(RegistryError, match="rejected and cannot be approved"):
        registry.promote(name, 3)
    assert registry.version_for(name, CHALLENGER) == "2"  # untouched: v3 was never exposed

    # Rejecting the exposed challenger withdraws it: challenger goes back to the champion's version.
    registry.reject(name, 2, "Dr Carol", "subgroup calibration")
    assert registry.version_for(name, CHALLENGER) == registry.version_for(name, CHAMPION) == "1"
    history = registry.approvals(mlflow.MlflowClient().get_registered_model(name))
    assert history[-1] == {**history[-1], "version": "2", "decision": "rejected", "challenger_to": "1"}
    with pytest.raises(RegistryError, match="is the champion"):
        registry.reject(name, 1, "Dr Carol", "no")


@pytest.mark.parametrize(
    ("approver", "reason", "words"),
    [("", "ok", "approver is required"), ("   ", "ok", "approver is required"), ("Dr X", " ", "reason")],
)
def test_approve_and_reject_need_a_named_approver_and_a_reason(
    local: dict[str, object], approver: str, reason: str, words: str
) -> None:
    name = "readmission-who"
    if registry.newest_version(name) is None:
        _register_both(local, name)
    registry.register(local["v2"].run_id, "model", name)  # type: ignore[attr-defined]
    newest = registry.newest_version(name).version  # type: ignore[union-attr]
    for act in (registry.approve, registry.reject):
        with pytest.raises(RegistryError, match=words):
            act(name, newest, approver, reason)
    assert registry.newest_version(name).tags[registry.APPROVAL_TAG] == registry.PENDING  # type: ignore[union-attr]
    assert registry.version_for(name, CHALLENGER) == "2"
    with pytest.raises(RegistryError, match="unknown version '99'"):
        registry.approve(name, "99", "Dr X", "ok")


def _cli(*args: str):
    from typer.testing import CliRunner

    from ml.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_approve_prints_the_result_and_writes_the_audit_row(
    local: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serve import control
    from serve.store import PredictionStore

    name = "readmission-cli-approve"
    registry.register(local["v1"].run_id, "model", name)  # type: ignore[attr-defined]
    registry.register(local["v2"].run_id, "model", name)  # type: ignore[attr-defined]
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    monkeypatch.setenv("MEDISCALE_STORE_URL", url)

    listed = _cli("registry", "list")
    assert listed.exit_code == 0, listed.output
    rows = [line.split() for line in listed.output.splitlines() if line.startswith(name)]
    assert [r[:4] for r in rows] == [
        [name, "2", "-", "pending"],
        [name, "1", "challenger,champion", "bootstrap"],
    ]

    done = _cli("registry", "approve", name, "2", "--by", "Dr Alice Smith", "--reason", "passed review")
    assert done.exit_code == 0, done.output
    assert f"{name} v2 approved by Dr Alice Smith at 20" in done.output and "now challenger" in done.output
    assert "audit: monitor_events #" in done.output and "WARNING" not in done.output
    assert registry.version_for(name, CHALLENGER) == "2"
    with PredictionStore(url) as store:
        [event] = control.events(store, kind="approval")
    assert event.model_versions == {name: "2"}
    assert event.payload == {
        "decision": "approved",
        "model": name,
        "version": "2",
        "approver": "Dr Alice Smith",
        "reason": "passed review",
    }
    assert f"#{event.id}" in done.output and "Dr Alice Smith" in event.summary

    registry.register(local["v2"].run_id, "model", name)  # type: ignore[attr-defined]
    refused = _cli("registry", "approve", name, "3", "--by", " ", "--reason", "x")
    assert refused.exit_code == 2 and "approver is required" in refused.output
    rejected = _cli("registry", "reject", name, "3", "--by", "Dr Bob", "--reason", "leaky feature")
    assert rejected.exit_code == 0 and "v3 rejected by Dr Bob" in rejected.output, rejected.output
    with PredictionStore(url) as store:
        kinds = [
            (e.payload["decision"], e.payload["version"]) for e in control.events(store, kind="approval")
        ]
    assert kinds == [("rejected", "3"), ("approved", "2")]
    blocked = _cli("registry", "promote", "--model", name, "--version", "3")
    assert blocked.exit_code == 2 and "rejected" in blocked.output


def test_cli_approve_still_approves_with_a_warning_when_the_store_is_unreachable(
    local: dict[str, object], tmp_path: Path
) -> None:
    name = "readmission-cli-no-store"
    registry.register(local["v1"].run_id, "model", name)  # type: ignore[attr-defined]
    registry.register(local["v2"].run_id, "model", name)  # type: ignore[attr-defined]
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    done = _cli(
        "registry", "approve", name, "2", "--by", "Dr Alice", "--reason", "ok",
        "--store-url", f"sqlite:///{blocker}/predictions.db",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "WARNING" in done.output and "audit row was NOT written" in done.output
    assert registry.version_for(name, CHALLENGER) == "2"


# --------------------------------------------------------------------------- a real tracking server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on loopback proxying artifacts (clients upload over HTTP, as to a remote one)."""
    port, artifacts = _free_port(), tmp_path / "art"
    cli = Path(sys.executable).with_name("mlflow")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "mlflow"]
    command += [
        "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        # The client keeps connections alive; without a bound uvicorn waits on them at shutdown.
        "--uvicorn-opts", "--timeout-graceful-shutdown 2",
    ]  # fmt: skip
    # No background job runner: this test needs none, and it makes shutdown take ~15 s.
    env = {**os.environ, **QUIET_MLFLOW, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_file = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server not healthy in 60 s: {(tmp_path / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.3)
        yield url, artifacts
    finally:
        server.terminate()  # the CLI forwards SIGTERM to its uvicorn child
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # its own session: only this server's processes
            server.wait()
        log_file.close()


def test_remote_tracking_server(
    mlflow_server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, artifacts = mlflow_server
    _point_at(monkeypatch, tmp_path / "unused")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert registry.configure() == url
    assert not (tmp_path / "unused").exists()  # a remote store needs no local data dir

    exp = registry.experiment("readmission-remote")
    assert mlflow.get_experiment(exp).artifact_location.startswith("mlflow-artifacts:")
    v1, v2 = _log(exp, 3.0), _log(exp, 7.0)
    assert registry.register(v1.run_id, "model", "readmission-remote").aliases == [CHALLENGER, CHAMPION]
    assert registry.register(v2.run_id, "model", "readmission-remote").aliases == []
    with pytest.raises(RegistryError, match="approve it first"):
        registry.promote("readmission-remote", 2)
    assert registry.approve("readmission-remote", 2, "Dr Remote", "ok").aliases == [CHALLENGER]
    registry.promote("readmission-remote", 2)
    assert registry.version_for("readmission-remote", CHAMPION) == "2"
    assert _predict("readmission-remote") == v2.expected
    assert registry.rollback("readmission-remote").version == "1"
    assert _predict("readmission-remote") == v1.expected
    assert list(artifacts.rglob("MLmodel")), "artifacts did not go through the server"
