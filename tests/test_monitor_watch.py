"""`python -m monitor watch`: the pieces of a pass (fast tier) and a whole pass end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

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
