"""Shared fixtures: one local Ray cluster per session, the real datasets, a local S3 server."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prerequisites import in_ci, missing

# PostgreSQL fixtures (`postgres_url`, `fresh_postgres_url`) live in tests/postgres.py; Serve
# fixtures and `deploy` (`serve_port`) in tests/serving.py; the two-node Ray cluster
# (`two_node_cluster`) in tests/cluster.py.
pytest_plugins = ["postgres", "serving", "cluster"]

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage pings from test runs
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


TEST_ROLES = ("predict", "feedback", "read", "admin")


@pytest.fixture(scope="session")
def api_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One key per role in a session key file, which every Serve proxy and replica of the session
    uses (the environment is set before Ray starts, as `make run` and the manifests do): role ->
    key. The proxy runs the auth gate (serve/gate.py), so each HTTP test goes through it."""
    from serving import KEYS

    from serve.keys import FileKeys, create

    path = tmp_path_factory.mktemp("keys") / "keys.json"
    source = FileKeys(path)
    for role in TEST_ROLES:
        KEYS[role] = create(source, f"test-{role}", role, rate_per_minute=600_000)[1]
    os.environ["MEDISCALE_API_KEYS_FILE"] = str(path)
    # The proxy's own store (its audit rows for refused roles): never the repo's artifacts/.
    os.environ.setdefault("MEDISCALE_DATA_DIR", str(tmp_path_factory.mktemp("data")))
    os.environ["MEDISCALE_API_KEY"] = KEYS["admin"]  # what the dashboard and `monitor` send
    os.environ["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = "serve.gate:proxy_middlewares"
    return dict(KEYS)


@pytest.fixture(scope="session")
def ray_cluster(api_keys: dict[str, str]) -> Iterator[object]:
    """A 2-CPU local Ray shared by the whole session (starting one costs 6-8 s), started with the
    session's API keys in its environment."""
    import ray
    import ray.data

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The shared real datasets, or skip: the suite must pass on a fresh clone without them (under
    CI a failure: CI has them)."""
    folder = Path(os.environ.get("MEDISCALE_DATASETS") or REPO_ROOT.parent / "shared" / "datasets")
    if not folder.is_dir():
        missing(f"shared datasets not found at {folder} (set MEDISCALE_DATASETS)")
    return folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the Ray cluster (directly or through a fixture) get the `ray` marker, so
    `make test-fast` (-m "not ray and not slow") is the edit-loop tier."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


# --------------------------------------------------------------------------- CI runs every test


def _no_skips_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI a skip is a failure, whatever raised it (tests/prerequisites.py fails first with a
    clearer message where it is used): CI provides every prerequisite, so a skip there is a test
    that silently never ran."""
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI ({reason}): CI must run every test; provide it in .ci/run"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    _no_skips_under_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    report = yield
    _no_skips_under_ci(report)
    return report


# --------------------------------------------------------------------------- per-test timeout

# pyproject.toml's pytest-timeout limit covers a test's setup too, so the first test of a run that
# needs `registered_models` also pays for the session's training: the Ray cluster, the synthetic
# raw data and features, a tiny BERT and four trainings (and, for a Serve test, Serve's start and
# first deployment). Measured as that test's setup on 2 cores: 123-237 s in 17 runs (whole-suite
# CI runs and single files). Whichever test comes first in the run (by the order, -k or a single
# file) gets this much on top of its own limit: 1.5 x the slowest measured.
TRAINING_SETUP_SECONDS = 360


def pytest_collection_finish(session: pytest.Session) -> None:
    first = next((i for i in session.items if "registered_models" in getattr(i, "fixturenames", ())), None)
    if first is None:
        return
    marker = first.get_closest_marker("timeout")
    if marker is None:
        own, options = getattr(session.config, "_env_timeout", None), {}
    else:
        own = marker.args[0] if marker.args else marker.kwargs.get("timeout")
        options = {k: v for k, v in marker.kwargs.items() if k != "timeout"}
    if own:  # None or 0: no limit
        first.add_marker(pytest.mark.timeout(float(own) + TRAINING_SETUP_SECONDS, **options), append=False)


# --------------------------------------------------------------------------- MLflow configuration

MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _mlflow_uris() -> tuple[str | None, str | None]:
    """MLflow's process-wide tracking and registry URIs (None: not set, or MLflow not imported)."""
    tracking = sys.modules.get("mlflow.tracking._tracking_service.utils")
    registry = sys.modules.get("mlflow.tracking._model_registry.utils")
    return getattr(tracking, "_tracking_uri", None), getattr(registry, "_registry_uri", None)


@contextlib.contextmanager
def mlflow_configuration_kept(prefixes: tuple[str, ...] = ()) -> Iterator[None]:
    """On exit, put back what points this process at an MLflow store: the MLflow URI variables (and
    every variable starting with one of `prefixes`), MLflow's own tracking and registry URIs, and
    ml.registry's module state. `mlflow.set_tracking_uri` (which `registry.configure` calls) exports
    MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI, which a `monkeypatch.delenv` of a variable that was
    not set does not undo: without this the next test or module (and any subprocess or Ray cluster it
    starts) would inherit an earlier test's registry."""
    from ml import registry

    def names() -> set[str]:
        return {*MLFLOW_URI_VARIABLES, *(k for k in os.environ if prefixes and k.startswith(prefixes))}

    env = {k: os.environ.get(k) for k in names()}
    uris, state = _mlflow_uris(), registry.saved_state()
    try:
        yield
    finally:
        if _mlflow_uris() != uris:
            import mlflow

            mlflow.set_tracking_uri(uris[0])  # type: ignore[arg-type]  # None: back to unset
            mlflow.set_registry_uri(uris[1])  # type: ignore[arg-type]
        for key in names() | env.keys():
            if env.get(key) is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = env[key]  # type: ignore[assignment]
        registry.restore_state(state)


@pytest.fixture(autouse=True, scope="module")
def _mlflow_configuration_per_module() -> Iterator[None]:
    """A module's own fixtures (a private data dir and registry) end with the module: the next one
    starts with MLflow configured as this one did. Only the MLflow variables here: MEDISCALE_*
    variables set by a session fixture first used in this module belong to the session."""
    with mlflow_configuration_kept():
        yield


@pytest.fixture(autouse=True)
def _mlflow_configuration_per_test() -> Iterator[None]:
    """Each test leaves MLflow, ml.registry and the MEDISCALE_* variables as it found them (after
    its session and module fixtures), whatever it configured or set without monkeypatch."""
    with mlflow_configuration_kept(("MEDISCALE_",)):
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto) on loopback with one bucket, `mediscale-test`."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        for key, value in {**S3_ENV, "MEDISCALE_S3_ENDPOINT_URL": endpoint}.items():
            env.setenv(key, value)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="mediscale-test"
        )
        yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def synthetic_raw(ray_cluster: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic raw EHR folder made by the real Ray generator (two blocks)."""
    from data.synth import BLOCK_PATIENTS, generate

    out = tmp_path_factory.mktemp("synthetic") / "raw"
    generate(BLOCK_PATIENTS + 500, seed=11, out=str(out))
    return out


@pytest.fixture(scope="session")
def synthetic_features(synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Features built from `synthetic_raw` by the Ray Data pipeline."""
    from data.features import build_features

    out = tmp_path_factory.mktemp("features") / "features"
    build_features(str(synthetic_raw), str(out))
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the bundled MiniLM tokenizer: a real
    Hugging Face model folder that trains in seconds."""
    from transformers import BertConfig, BertForSequenceClassification

    from ml.text import DEFAULT_MODEL, load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def registered_models(
    ray_cluster: object, synthetic_features: Path, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """A data dir whose MLflow registry holds a tabular and a (tiny) note model, each with a
    champion (v1, bootstrap) and an approved challenger (v2, another configuration). Tests point
    MEDISCALE_DATA_DIR at `home` themselves."""
    from ml.experiment import train_tabular, train_text
    from ml.tabular import TabularConfig
    from ml.text import TextConfig

    home = tmp_path_factory.mktemp("model-home")
    runs = str(tmp_path_factory.mktemp("model-runs"))
    tabular = TabularConfig(max_rounds=60, early_stopping_rounds=15, report_every=30, learning_rate=0.1)
    note = TextConfig(
        model=str(tiny_bert), max_length=128, head_tokens=32, batch_size=16, max_steps=6, learning_rate=1e-3
    )
    out: dict = {"home": home}
    # The trainings configure MLflow for `home`: put the process back as it was when done.
    with mlflow_configuration_kept(), pytest.MonkeyPatch.context() as env:
        env.setenv("MEDISCALE_DATA_DIR", str(home))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        features = str(synthetic_features)
        out["tabular"] = train_tabular(features, tabular, register=True, n_boot=50, storage_path=runs)
        out["note"] = train_text(
            "readmission", note, features=features, register=True, n_boot=50, sample=400, storage_path=runs
        )
        out["tabular_v2"] = train_tabular(
            features, tabular.model_copy(update={"max_depth": 3}), register=True, n_boot=50, storage_path=runs
        )
        out["note_v2"] = train_text(
            "readmission",
            note.model_copy(update={"max_steps": 8}),
            features=features,
            register=True,
            n_boot=50,
            sample=400,
            storage_path=runs,
        )
        # Registration leaves a new version pending: a named person makes it the challenger.
        from ml import registry

        for model, trained in (("readmission-tabular", "tabular_v2"), ("readmission-notes", "note_v2")):
            version = out[trained]["registered"]["version"]
            registry.approve(model, version, "test fixture", "second configuration for the tests")
    return out
