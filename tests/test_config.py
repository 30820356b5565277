"""One settings object for every environment variable: read generically, secrets masked, the
production start-up check, and the README's table equal to the object."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from data.config import ENV, ConfigError, Settings, markdown_table

REPO = Path(__file__).resolve().parents[1]


def test_every_field_has_its_variables_and_is_read() -> None:
    assert set(ENV) == set(Settings.model_fields)
    env = {
        "MEDISCALE_DATA_DIR": "/d",
        "MEDISCALE_DATASETS": "/s",
        "AWS_ENDPOINT_URL": "http://s3:9000",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MEDISCALE_STORE_URL": "postgresql+psycopg://u:p@h/db",
        "MEDISCALE_PATIENT_KEY_SALT": "pepper-123",
        "MEDISCALE_ENV": "production",
        "MEDISCALE_SERVICE_URL": "http://svc:8000",
        "MEDISCALE_CODE_VERSION": "abc123",
        "RAY_ADDRESS": "http://head:8265",
    }
    settings = Settings.from_env(env)
    assert settings.data_dir == Path("/d") and settings.s3_endpoint_url == "http://s3:9000"
    assert settings.tracking_uri == "http://mlflow:5000" and settings.ray_address == "http://head:8265"
    assert settings.patient_key_salt.get_secret_value() == "pepper-123"
    assert "pepper-123" not in repr(settings) and "pepper-123" not in str(settings.model_dump())
    assert (
        Settings.from_env({"MEDISCALE_S3_ENDPOINT_URL": "a", "AWS_ENDPOINT_URL": "b"}).s3_endpoint_url == "a"
    )
    with pytest.raises(ConfigError, match=r"^unusable setting: MEDISCALE_ENV$"):
        Settings.from_env({"MEDISCALE_ENV": "prod"})  # a typo is an error, not development


def test_one_store_url_fallback() -> None:
    settings = Settings.from_env({"MEDISCALE_DATA_DIR": "/tmp/x"})
    assert settings.resolved_store_url() == "sqlite:////tmp/x/predictions.db"
    assert settings.resolved_store_url("/tmp/y") == "sqlite:////tmp/y/predictions.db"
    given = Settings.from_env({"MEDISCALE_STORE_URL": "postgresql+psycopg://h/db"})
    assert given.resolved_store_url("/tmp/y") == "postgresql+psycopg://h/db"


def test_production_without_the_salt_is_a_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from serve.store import DEV_PATIENT_KEY_SALT, patient_key, patient_key_salt

    Settings.from_env({}).check_production()  # development: fine
    with pytest.raises(ConfigError, match="MEDISCALE_PATIENT_KEY_SALT"):
        Settings.from_env({"MEDISCALE_ENV": "production"}).check_production()
    monkeypatch.delenv("MEDISCALE_PATIENT_KEY_SALT", raising=False)
    monkeypatch.setenv("MEDISCALE_ENV", "development")
    assert patient_key_salt() == DEV_PATIENT_KEY_SALT
    monkeypatch.setenv("MEDISCALE_ENV", "production")
    with pytest.raises(ConfigError, match="MEDISCALE_PATIENT_KEY_SALT is not set: production refuses"):
        patient_key("p-1")
    monkeypatch.setenv("MEDISCALE_PATIENT_KEY_SALT", "s3cret")
    assert patient_key("p-1") != patient_key("p-1", DEV_PATIENT_KEY_SALT)


def test_the_readme_table_is_the_settings_object() -> None:
    readme = (REPO / "README.md").read_text()
    assert markdown_table() in readme, "README's configuration table: paste data.config.markdown_table()"


def test_no_module_reads_the_environment_itself() -> None:
    """Only data/config.py reads MediScale's variables. Exceptions: the S3 client's own AWS
    variables, the watch runner passing the environment on to its children, the Kubernetes
    client's in-cluster variables, and tune setting one of Ray's own."""
    allowed = {
        "data/config.py",
        "data/storage.py",
        "monitor/watch.py",
        "monitor/k8s.py",
        "tune/xgboost_search.py",
    }
    found = subprocess.run(
        [
            "git",
            "grep",
            "-l",
            "-E",
            r"os\.environ|os\.getenv",
            "--",
            "data",
            "ml",
            "serve",
            "monitor",
            "tune",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found and set(found) <= allowed, sorted(set(found) - allowed)
