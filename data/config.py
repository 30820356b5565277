"""One typed settings object for every environment variable the project reads.

Nothing here runs at import: callers build `Settings.from_env()` when they need it, so tests and
CLIs point the project elsewhere through the environment alone. Each field names its variable
(`ENV`); the README's configuration table is generated from `markdown_table()` and a test keeps
the two equal. Secrets are `SecretStr`: they never print in a repr, a log line or an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError

# The S3 client reads these itself (data/storage.py passes them on); listed so the README's table
# is complete. Never stored in Settings: they are the AWS SDK's own.
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")


STORE_FILE = "predictions.db"


class ConfigError(ValueError):
    """A setting is missing or unusable; the message names the variable, never its value."""


class Settings(BaseModel):
    """Where MediScale keeps its working files, finds external services, and its secrets."""

    data_dir: Path = Field(
        default=Path("artifacts"),
        description="Working folder for generated data, features, models and the MLflow db.",
    )
    datasets_dir: Path = Field(
        default=Path("../shared/datasets"),
        description="Folder with the real public datasets (never copied into the repo).",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint (MinIO, moto, ...); unset means AWS itself.",
    )
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking server; unset means `sqlite:///<data dir>/mlflow.db`.",
    )
    store_url: str | None = Field(
        default=None,
        description="Prediction store database URL, e.g. `postgresql+psycopg://user:pass@host/db`; "
        "unset means SQLite `predictions.db` in the data dir.",
    )
    patient_key_salt: SecretStr | None = Field(
        default=None,
        description="Secret salt for the patient keys in the prediction store. Required in "
        "production; in development a public salt is used, with a warning.",
    )
    environment: Literal["development", "production"] = Field(
        default="development",
        description="`production` turns missing secrets (the patient-key salt) into start-up errors.",
    )
    service_url: str = Field(
        default="http://localhost:8000",
        description="The running service, whose `GET /variants` gives `python -m monitor` the weights "
        "and risk bands (else `serve/config.yaml`).",
    )
    code_version: str | None = Field(
        default=None,
        description="Code version written into each decision; unset means the git commit "
        "(set it in images without `.git`).",
    )
    ray_address: str | None = Field(
        default=None,
        description="A running Ray cluster for the CLIs (set by `ray job submit`); unset starts a local one.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="The service's API key file (`python -m serve keys create --file`; a mounted "
        "Secret in Kubernetes); unset means the `api_keys` table of the prediction store.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="The key this process sends to the service (the dashboard's and `monitor`'s "
        "calls to `GET /variants`, the benchmarks).",
    )
    rate_per_minute: int = Field(
        default=600,
        ge=1,
        description="Requests per minute a key may make when it was created without its own limit "
        "(shared by all replicas; beyond it the answer is 429 with `Retry-After`).",
    )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, variables in ENV.items():
            for variable in variables:
                if source.get(variable):
                    values[name] = source[variable]
                    break
        try:
            return cls(**values)
        except ValidationError as exc:  # name the variable, never its value (it may be a secret)
            names = sorted({"/".join(ENV[str(e["loc"][0])]) for e in exc.errors() if e["loc"]})
            raise ConfigError(f"unusable setting: {', '.join(names)}") from None

    def resolved_store_url(self, data_dir: str | Path | None = None) -> str:
        """The store URL, or the SQLite file in `data_dir` (default: this data dir). The only
        fallback: the Router, the CLIs and the dashboard all call this."""
        if self.store_url:
            return self.store_url
        folder = Path(data_dir) if data_dir else self.data_dir
        return f"sqlite:///{(folder / STORE_FILE).resolve()}"

    def service_headers(self) -> dict[str, str]:
        """The auth header for calls to the service (empty when no key is set)."""
        if self.api_key is None:
            return {}
        return {"Authorization": f"Bearer {self.api_key.get_secret_value()}"}

    def check_production(self) -> None:
        """Raise ConfigError when production runs without its secrets (a start-up error)."""
        if self.environment == "production" and self.patient_key_salt is None:
            raise ConfigError(
                "MEDISCALE_PATIENT_KEY_SALT is not set: production refuses to hash patient ids with "
                "the public development salt (put it in the mediscale-secrets Secret)"
            )


# field -> the variables that set it, first set wins
ENV: dict[str, tuple[str, ...]] = {
    "data_dir": ("MEDISCALE_DATA_DIR",),
    "datasets_dir": ("MEDISCALE_DATASETS",),
    "s3_endpoint_url": ("MEDISCALE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
    "tracking_uri": ("MLFLOW_TRACKING_URI",),
    "store_url": ("MEDISCALE_STORE_URL",),
    "patient_key_salt": ("MEDISCALE_PATIENT_KEY_SALT",),
    "environment": ("MEDISCALE_ENV",),
    "service_url": ("MEDISCALE_SERVICE_URL",),
    "code_version": ("MEDISCALE_CODE_VERSION",),
    "ray_address": ("RAY_ADDRESS",),
    "api_keys_file": ("MEDISCALE_API_KEYS_FILE",),
    "api_key": ("MEDISCALE_API_KEY",),
    "rate_per_minute": ("MEDISCALE_RATE_PER_MINUTE",),
}


def markdown_table() -> str:
    """The README's configuration table, from the fields above (a test keeps them equal)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        variables = " or ".join(f"`{v}`" for v in ENV[name])
        default = "unset" if field.default is None else f"`{field.default}`"
        rows.append(f"| {variables} | {default} | {field.description} |")
    aws = ", ".join(f"`{v}`" for v in AWS_VARIABLES)
    rows.append(f"| {aws} | the AWS chain | S3 credentials, read from the environment by the S3 client |")
    return "\n".join(rows)
