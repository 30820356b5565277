"""One typed settings layer for every stage, read from the environment on demand.

Nothing here runs at import: callers build `Settings.from_env()` when they need paths, so
tests and CLIs can point the project somewhere else through the environment alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field


class Settings(BaseModel):
    """Where MediScale keeps its working files and finds external services."""

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
        description="S3-compatible endpoint (MinIO, moto, ...); None means AWS itself.",
    )
    store_url: str | None = Field(
        default=None,
        description="Prediction store database URL; None means SQLite `predictions.db` in data_dir.",
    )
    service_url: str = Field(
        default="http://localhost:8000",
        description="The running Serve application, read by `python -m monitor` (GET /variants).",
    )

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        values: dict[str, object] = {}
        if env.get("MEDISCALE_DATA_DIR"):
            values["data_dir"] = Path(env["MEDISCALE_DATA_DIR"])
        if env.get("MEDISCALE_DATASETS"):
            values["datasets_dir"] = Path(env["MEDISCALE_DATASETS"])
        endpoint = env.get("MEDISCALE_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            values["s3_endpoint_url"] = endpoint
        if env.get("MEDISCALE_STORE_URL"):
            values["store_url"] = env["MEDISCALE_STORE_URL"]
        if env.get("MEDISCALE_SERVICE_URL"):
            values["service_url"] = env["MEDISCALE_SERVICE_URL"]
        return cls(**values)
