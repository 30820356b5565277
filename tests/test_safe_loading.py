"""Serving loads models without unpickling or running code from the artifact store: registration
records a sha256 of the predictor folder, and every loader refuses a folder that differs from it,
holds a pickle, or has no recorded digest. Real MLflow (sqlite + local artifacts) and real XGBoost
and (tiny) BERT predictors, logged the way training logs them."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost
from mlflow.models import infer_signature

from ml import registry
from ml.artifacts import UnsafeModel, digest, find_pickles
from ml.experiment import NOTE_CODE, TABULAR_CODE, log_pyfunc
from ml.registry import DIGEST_TAG, PATH_TAG, RegistryError
from ml.tabular import MODEL_FILE, Calibrator, Preprocessor, TabularPredictor
from serve.loading import RegistryLoader

QUIET_MLFLOW = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
FAST_LOG = {"pip_requirements": ["mlflow"]}  # explicit: skips the slow requirement inference
MISMATCH = r"v\d+: artifact digest mismatch: recorded [0-9a-f]{12}…, found [0-9a-f]{12}…$"


# --------------------------------------------------------------------------- helpers


def _tiny_tabular() -> tuple[TabularPredictor, pd.DataFrame]:
    """A real TabularPredictor (booster, preprocessor, calibrator) fitted in a fraction of a second."""
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {
            "age": rng.normal(65, 12, n),
            "prior_visits": rng.poisson(1.0, n).astype("float64"),
            "ward": rng.choice(["cardio", "general", "renal"], n),
        }
    )
    logit = (frame["age"] - 65) / 10 + frame["prior_visits"] - 1 + (frame["ward"] == "renal")
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int).to_numpy()
    pre = Preprocessor(["age", "prior_visits"], [], {"ward": ["cardio", "general", "renal"]})
    data = xgboost.DMatrix(pre.transform(frame), label=y, enable_categorical=True)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1}, data, 8)
    predictor = TabularPredictor(booster, pre, Calibrator.fit(booster.predict(data), y, "platt"))
    return predictor, frame


def _log(experiment_id: str, code: Path, predictor, example, outputs, extra: dict | None = None) -> str:
    """Log as training does (ml.experiment.log_pyfunc); `extra` files go into the predictor folder."""
    with mlflow.start_run(experiment_id=experiment_id) as run, tempfile.TemporaryDirectory() as tmp:
        saved = predictor.save(Path(tmp) / "predictor")
        for rel, data in (extra or {}).items():
            (saved / rel).parent.mkdir(parents=True, exist_ok=True)
            (saved / rel).write_bytes(data)
        log_pyfunc(code, saved, infer_signature(example, outputs), **FAST_LOG)
    return run.info.run_id


def _store_folder(name: str, version: str) -> Path:
    """The version's predictor folder inside the local artifact store itself (not a copy)."""
    uri = mlflow.MlflowClient().get_model_version_download_uri(name, version)
    tags = mlflow.MlflowClient().get_model_version(name, version).tags
    return Path(unquote(urlparse(uri).path)) / tags[PATH_TAG]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _point_at(mp: pytest.MonkeyPatch, data_dir: Path) -> None:
    for key, value in QUIET_MLFLOW.items():
        mp.setenv(key, value)
    mp.setenv("MEDISCALE_DATA_DIR", str(data_dir))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One local store for the module and a tiny tabular predictor."""
    data_dir = tmp_path_factory.mktemp("safe-loading") / "data"
    predictor, frame = _tiny_tabular()
    with pytest.MonkeyPatch.context() as mp:
        _point_at(mp, data_dir)
        registry.configure()
        exp = registry.experiment("safe-loading")
        yield {"data_dir": data_dir, "experiment_id": exp, "predictor": predictor, "X": frame}


@pytest.fixture
def local(store: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Each test re-points MLflow at the module's store (other modules move it elsewhere)."""
    _point_at(monkeypatch, store["data_dir"])
    registry.configure()
    return store


def _register(store: dict, name: str, extra: dict | None = None) -> str:
    """Log the predictor in a run of its own (versions of one run share its artifacts, so a test
    that tampers with them needs its own) and register it as `name`."""
    predictor, X = store["predictor"], store["X"]
    outputs = pd.DataFrame({"risk": predictor.predict_proba(X), "risk_uncalibrated": 0.0})
    run_id = _log(store["experiment_id"], TABULAR_CODE, predictor, X, outputs, extra)
    return registry.register(run_id, "model", name).version


# --------------------------------------------------------------------------- ml.artifacts


def test_digest_follows_the_documented_scheme(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    (folder / "model").mkdir(parents=True)
    (folder / "meta.json").write_text('{"a": 1}')
    (folder / "model" / "w.safetensors").write_bytes(b"\x00\x01")
    lines = [
        f"{rel}\0{hashlib.sha256((folder / rel).read_bytes()).hexdigest()}\n"
        for rel in sorted(["meta.json", "model/w.safetensors"])
    ]
    assert digest(folder) == hashlib.sha256("".join(lines).encode()).hexdigest()

    import shutil

    shutil.copytree(folder, tmp_path / "elsewhere")
    assert digest(tmp_path / "elsewhere") == digest(folder)  # where it lives does not count
    before = digest(folder)
    (folder / "meta.json").write_text('{"a": 2}')
    assert digest(folder) != before
    (folder / "meta.json").write_text('{"a": 1}')
    (folder / "meta.json").rename(folder / "meta2.json")
    assert digest(folder) != before  # names count too
    (folder / "meta2.json").rename(folder / "meta.json")
    (folder / "new.txt").write_text("")
    assert digest(folder) != before  # so does an added (even empty) file


def test_find_pickles_flags_pickles_and_spares_model_formats(tmp_path: Path) -> None:
    predictor, _ = _tiny_tabular()
    saved = predictor.save(tmp_path / "tabular")
    assert (saved / MODEL_FILE).is_file() and find_pickles(saved) == []  # UBJSON + JSON files

    folder = tmp_path / "mixed"
    folder.mkdir()
    for protocol in (2, 3, 4, 5):
        (folder / f"p{protocol}.json").write_bytes(pickle.dumps({"x": 1}, protocol=protocol))
    for name in ("model.pkl", "a.pickle", "pytorch_model.bin", "w.pt", "w.pth", "m.joblib", "c.ckpt"):
        (folder / name).write_bytes(b"not even a pickle")  # the extension alone is enough
    (folder / "disguised.safetensors").write_bytes(pickle.dumps([1], protocol=4))
    # A well-formed safetensors file whose 640-byte header makes it start 0x80 0x02, like a pickle.
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).ljust(640).encode()
    (folder / "real.safetensors").write_bytes((640).to_bytes(8, "little") + header + b"\x00\x00\x80?")
    (folder / "notes.txt").write_bytes(b"\x80\x01 protocol 1 has no PROTO opcode")
    from safetensors.numpy import load_file

    assert (folder / "real.safetensors").read_bytes()[:2] == b"\x80\x02"
    assert load_file(folder / "real.safetensors")["w"].tolist() == [1.0]
    assert find_pickles(folder) == sorted(
        ["p2.json", "p3.json", "p4.json", "p5.json", "model.pkl", "a.pickle", "pytorch_model.bin"]
        + ["w.pt", "w.pth", "m.joblib", "c.ckpt", "disguised.safetensors"]
    )


def test_unsafe_model_names_the_model_and_survives_pickling() -> None:
    exc = UnsafeModel("readmission-tabular", 3, "registered without an artifact digest; re-register it")
    again = pickle.loads(pickle.dumps(exc))  # how Ray ships it from a replica to its caller
    assert type(again) is UnsafeModel and str(again) == str(exc)
    assert str(exc) == "readmission-tabular v3: registered without an artifact digest; re-register it"
    assert (again.name, again.version) == ("readmission-tabular", "3")


# --------------------------------------------------------------------------- registration and loading


def test_registered_version_carries_the_digest_and_loads_the_same(local: dict, tmp_path: Path) -> None:
    name = "safe-roundtrip"
    version = _register(local, name)
    tags = mlflow.MlflowClient().get_model_version(name, version).tags
    expected = digest(local["predictor"].save(tmp_path / "fresh"))  # the same predictor, saved again
    assert tags[DIGEST_TAG] == expected and tags[PATH_TAG] == "artifacts/predictor"

    loaded = RegistryLoader().tabular(name, version)
    X = local["X"]
    assert isinstance(loaded, TabularPredictor)
    assert np.array_equal(loaded.predict_proba(X), local["predictor"].predict_proba(X))
    pyfunc = registry.load_version(name, version).predict(X)["risk"].to_numpy()  # the MLflow face
    assert np.allclose(pyfunc, loaded.predict_proba(X))

    from ml.experiment import load_predictor

    assert np.array_equal(load_predictor(name, registry.CHAMPION).predict_proba(X), pyfunc)


def test_no_model_artifact_holds_a_pickle(local: dict) -> None:
    """Models from code: MLflow stores ml/pyfunc_tabular.py with the model, not a python_model.pkl."""
    name = "safe-no-pickle"
    version = _register(local, name)
    model = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}"))
    assert (model / "MLmodel").is_file()
    assert find_pickles(model) == [] and not list(model.rglob("*.pkl"))
    assert (model / TABULAR_CODE.name).read_text() == TABULAR_CODE.read_text()
    assert "model_code_path" in (model / "MLmodel").read_text()
    store = Path(mlflow.get_experiment(local["experiment_id"]).artifact_location.removeprefix("file://"))
    assert list(store.rglob("MLmodel")) and not list(store.rglob("*.pkl"))


def test_tampered_artifact_is_refused(local: dict) -> None:
    name = "safe-tampered"
    version = _register(local, name)
    target = _store_folder(name, version) / "calibrator.json"
    data = bytearray(target.read_bytes())
    data[-2] ^= 0x01  # one byte
    target.write_bytes(bytes(data))
    with pytest.raises(UnsafeModel, match=f"^{name} {MISMATCH}") as caught:
        RegistryLoader().tabular(name, version)
    assert "coef" not in str(caught.value)  # names the problem, never the file's contents
    with pytest.raises(UnsafeModel, match=MISMATCH):
        registry.load_predictor_folder(name, version)


def test_version_without_a_digest_is_refused(local: dict) -> None:
    name = "safe-untagged"
    version = _register(local, name)
    mlflow.MlflowClient().delete_model_version_tag(name, version, DIGEST_TAG)
    with pytest.raises(UnsafeModel, match=f"^{name} v{version}: registered without an artifact digest; re-"):
        RegistryLoader().tabular(name, version)


def test_pickle_dropped_into_the_store_is_refused(local: dict) -> None:
    name = "safe-dropped"
    version = _register(local, name)
    (_store_folder(name, version) / "calibrator_cache.json").write_bytes(pickle.dumps({"x": 1}, protocol=4))
    with pytest.raises(UnsafeModel, match=r"holds pickle file\(s\) \['calibrator_cache.json'\]"):
        RegistryLoader().tabular(name, version)


def test_registration_refuses_a_predictor_holding_a_pickle(local: dict) -> None:
    name = "safe-refused"
    with pytest.raises(RegistryError, match=r"safe-refused v1 refused and deleted: .*\['extra.pkl'\]"):
        _register(local, name, {"extra.pkl": b"x"})
    assert mlflow.MlflowClient().search_model_versions(f"name = '{name}'") == []  # nothing left to serve


def test_loading_runs_no_model_code(local: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The safe loader neither unpickles nor executes the model's code file (MLflow would import it
    as a `code_model_*` module), so it works with model-code execution switched off."""
    name = "safe-no-code"
    version = _register(local, name)
    monkeypatch.setenv("MLFLOW_ALLOW_MODEL_CODE_EXECUTION", "false")
    before = {m for m in sys.modules if m.startswith("code_model_")}
    loaded = RegistryLoader().tabular(name, version)
    assert {m for m in sys.modules if m.startswith("code_model_")} == before
    assert np.array_equal(loaded.predict_proba(local["X"]), local["predictor"].predict_proba(local["X"]))


# --------------------------------------------------------------------------- the note model


@pytest.fixture(scope="module")
def note_predictor(tiny_bert: Path):
    from transformers import AutoModelForSequenceClassification

    from ml.text import DEFAULT_MODEL, NotePredictor, TextConfig, load_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    config = TextConfig(model=str(tiny_bert), max_length=64, head_tokens=16)
    return NotePredictor(model, load_tokenizer(DEFAULT_MODEL), ["no", "yes"], config, positive="yes")


def test_note_model_round_trip_and_refusals(local: dict, note_predictor, tmp_path: Path) -> None:
    from ml.experiment import NotePyfunc
    from ml.text import MODEL_DIR, NotePredictor

    example = pd.DataFrame({"text": ["Lives alone; short of breath.", "Routine follow-up."]})
    run_id = _log(
        local["experiment_id"], NOTE_CODE, note_predictor, example, NotePyfunc.score(note_predictor, example)
    )
    name = "safe-notes"
    version = registry.register(run_id, "model", name).version  # HF safetensors + tokenizer: no pickle
    texts = example["text"].tolist()
    loaded = RegistryLoader().note(name, version)
    assert np.allclose(loaded.risk(texts), note_predictor.risk(texts), atol=1e-6)

    # use_safetensors=True: a torch pickle is never read, even when it is all there is.
    import torch

    folder = registry.load_predictor_folder(name, version, tmp_path)
    torch.save(note_predictor.model.state_dict(), folder / MODEL_DIR / "pytorch_model.bin")
    (folder / MODEL_DIR / "model.safetensors").unlink()
    with pytest.raises(OSError, match="safetensors"):
        NotePredictor.load(folder)

    (_store_folder(name, version) / MODEL_DIR / "pytorch_model.bin").write_bytes(b"\x80\x04 a torch pickle")
    with pytest.raises(UnsafeModel, match=r"holds pickle file\(s\) \['model/pytorch_model.bin'\]"):
        RegistryLoader().note(name, version)


# --------------------------------------------------------------------------- through Ray Serve


def test_refusal_reaches_the_caller_of_a_scorer_replica(local: dict, ray_cluster: object) -> None:
    """A TabularScorer replica refuses a tampered version; the Router (which awaits `warm` and
    reports `f"{type(exc).__name__}: {exc}"` on /healthz) gets the reason text."""
    from ray import serve

    from serve.scorers import TabularScorer

    name = "safe-serve"
    version = _register(local, name)
    (_store_folder(name, version) / "meta.json").write_text('{"kind": "swapped"}')
    env = {"MEDISCALE_DATA_DIR": str(local["data_dir"]), "MLFLOW_TRACKING_URI": registry.tracking_uri()}
    env |= {"MLFLOW_ALLOW_MODEL_CODE_EXECUTION": "false", **QUIET_MLFLOW}
    deployment = TabularScorer.options(
        name="SafeTabularScorer", ray_actor_options={"num_cpus": 0.25, "runtime_env": {"env_vars": env}}
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
        handle = serve.run(
            deployment.bind(name, str(local["data_dir"])), name="safe-loading", route_prefix=None
        )
        with pytest.raises(Exception) as caught:
            handle.warm.remote([version]).result(timeout_s=120)
    finally:
        serve.shutdown()
    exc = caught.value
    problem = f"models not ready: {type(exc).__name__}: {exc}"  # serve/router.py's wording
    assert "UnsafeModel" in type(exc).__name__ and isinstance(exc, UnsafeModel)
    assert f"{name} v{version}: artifact digest mismatch: recorded " in problem
    assert isinstance(exc.cause, UnsafeModel) and str(exc.cause).startswith(f"{name} v{version}: artifact")
