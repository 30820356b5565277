"""README commands run as a user runs them, where no other test does: `python -m data schema`,
`data import uci-diabetes` and `data import mimic3` on the real datasets (then `data validate` on
the MIMIC import), and the success paths of `ml registry promote` and `rollback`. Each is a
subprocess with the README's arguments; what the commands compute is tested in-process elsewhere
(tests/test_sources.py, tests/test_registry.py), so these check the command: exit code, what it
prints, what it writes. The cluster commands (`data synth`, `train-tabular`, `s3://` paths, `tune
--max-concurrent`) are in tests/test_cluster.py, on the two-node cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prerequisites import shared_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env or {**os.environ}, timeout=240)  # fmt: skip


def test_schema_prints_every_table_and_column() -> None:
    from data.schema import TABLES

    done = _run("data", "schema")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name, schema in TABLES.items():
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} ("))
        block = lines[start + 1 : start + 1 + len(schema)]
        for line, column in zip(block, schema, strict=True):
            assert line.split()[0] == column.name and column.metadata[b"doc"].decode() in line, line


@pytest.mark.shared_data
def test_import_uci_diabetes_command(datasets_dir: Path, tmp_path: Path) -> None:
    """The README's command on the shared folder (it finds the zip), then again without
    --overwrite: the existing output is kept and the command says so."""
    from data.featureset import FeatureFolder

    src = shared_dataset(datasets_dir, "diabetes130")
    out, summary = tmp_path / "uci", tmp_path / "uci.json"
    args = ("data", "import", "uci-diabetes", "--src", str(src), "--out", str(out))
    done = _run(*args, "--json", str(summary))
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads(summary.read_text()) == manifest == FeatureFolder.open(str(out)).manifest
    assert json.loads(done.stdout) == manifest["splits"]  # the counts, for people
    source = manifest["source"]
    assert source["rows_in_file"] == 101_766 and source["path"] == str(src)
    kept = source["rows_in_file"] - source["dropped_death_hospice"]
    assert sum(s["rows"] for s in manifest["splits"].values()) == source["rows_kept"] == kept > 95_000

    again = _run(*args)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr and "Traceback" not in again.stderr
    assert json.loads((out / "manifest.json").read_text()) == manifest


@pytest.mark.shared_data
def test_import_mimic3_command_then_validate(datasets_dir: Path, tmp_path: Path) -> None:
    src = shared_dataset(datasets_dir, "mimic3_demo")
    out, summary = tmp_path / "mimic-raw", tmp_path / "mimic.json"
    done = _run("data", "import", "mimic3", "--src", str(src), "--out", str(out), "--json", str(summary))
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads(summary.read_text()) == manifest
    tables = json.loads(done.stdout)
    assert tables == manifest["tables"] and tables["patients"] == 100 and tables["admissions"] == 129
    checked = _run("data", "validate", str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _aliases(listing: str, model: str) -> dict[str, str]:
    """Version -> its aliases column, from `ml registry list`'s table."""
    rows = [line.split() for line in listing.splitlines()[1:]]
    return {row[1]: row[2] for row in rows if row and row[0] == model}


def test_registry_promote_then_rollback_commands(registered_models: dict, tmp_path: Path) -> None:
    """On a copy of the session's registry (v1 champion, v2 an approved challenger): `promote`
    makes v2 champion, `rollback` gives it back to v1, as `registry list` and MLflow show."""
    from mlflow import MlflowClient

    from ml.registry import DB_FILE

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(registered_models["home"] / DB_FILE, home / DB_FILE)  # aliases live in the db
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["MEDISCALE_DATA_DIR"] = str(home)
    uri = f"sqlite:///{home / DB_FILE}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "readmission-tabular"

    def champion() -> str:
        return str(client.get_model_version_by_alias(name, "champion").version)

    def listed() -> dict[str, str]:
        done = _run("ml", "registry", "list", env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return _aliases(done.stdout, name)

    assert champion() == "1" and listed() == {"1": "champion", "2": "challenger"}
    promoted = _run("ml", "registry", "promote", "--model", name, "--version", "2", env=env)
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    assert promoted.stdout.strip() == f"{name} v2 is now champion"
    assert champion() == "2" and listed()["2"] == "challenger,champion"

    back = _run("ml", "registry", "rollback", "--model", name, env=env)
    assert back.returncode == 0, back.stderr[-2000:]
    assert back.stdout.strip() == f"{name} v1 is champion again"
    assert champion() == "1" and listed() == {"1": "champion", "2": "challenger"}
    # the session's registry, which other tests read, is untouched
    session_db = f"sqlite:///{registered_models['home'] / DB_FILE}"
    session = MlflowClient(tracking_uri=session_db, registry_uri=session_db)
    assert str(session.get_model_version_by_alias(name, "champion").version) == "1"
