"""The MediScale Ray Serve application: one calibrated readmission risk per patient record.

Deployments, composed by passing handles to constructors:

    Router (FastAPI ingress) -> Combiner -> TabularScorer   (XGBoost, calibrated, contributions)
                                        -> NoteScorer      (@serve.batch over the note model)

- Router: validates the record, assigns a variant (champion / challenger) by a hash of the
  patient id (sticky) or else the request id, asks the Combiner for that variant's risk,
  commits the prediction to the store before answering, and optionally scores the other
  variant in the background (shadow) without the client waiting for it. Its `user_config`
  (variants with weights and model references, shadow, alias refresh, risk bands) is hot:
  `reconfigure` resolves the references, loads the new versions into the scorers, and only
  then switches, so requests in flight finish on the old versions and none fail.
- Model references are MLflow aliases (`champion`) or version numbers. Aliases are resolved
  again every `alias_refresh_s`, so `python -m ml registry promote` reaches a running service.
- Scorers load versions on demand and keep the last few, so a switch never unloads a model a
  request still uses. Loading goes through an injected loader (the MLflow registry by default)
  so tests and other registries can swap it.
- Nothing blocks the event loop: model compute and store writes run in threads.

`serve run serve.app:app` uses the defaults; `serve run serve/config.yaml` (or `serve deploy`)
carries every setting.

(No `from __future__ import annotations` here: FastAPI must see the endpoint annotations as
real types through Serve's ingress wrapper, or it takes the body for query parameters.)
"""

import asyncio
import hashlib
import logging
import os
import re
import time
import uuid
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.records import (
    REQUEST_ID_PATTERN,
    BatchPrediction,
    BatchRequest,
    Feedback,
    PatientRecord,
    Prediction,
)
from serve.scoring import Scored, TabularResult, combine, score_tabular, to_prediction, to_store_row

log = logging.getLogger("ray.serve")

TABULAR_MODEL = "readmission-tabular"
NOTE_MODEL = "readmission-notes"
MODELS_KEPT = 4  # versions each scorer keeps loaded (old ones stay during a switch)


class AppArgs(BaseModel):
    """`build_app` arguments (the `args:` block of serve/config.yaml)."""

    tabular_model: str = TABULAR_MODEL
    note_model: str = NOTE_MODEL
    data_dir: str | None = Field(None, description="MLflow/store data dir; default MEDISCALE_DATA_DIR.")
    store_url: str | None = Field(
        None, description="Prediction store URL; default MEDISCALE_STORE_URL, else SQLite in the data dir."
    )
    store_note_text: bool = Field(False, description="Keep note text in the prediction store.")
    max_note_chars: int = Field(20_000, ge=1, description="Longer notes are refused with 413.")
    top_factors: int = Field(5, ge=0, le=50)


class VariantSpec(BaseModel):
    weight: float = Field(..., ge=0)
    tabular: str = Field(..., min_length=1, description="Alias or version of the tabular model.")
    note: str | None = Field(
        None,
        min_length=1,
        description="Alias or version of an opaque note model stacked on the tabular risk; "
        "None (the default): the note counts through its concepts in the tabular model only.",
    )


class RouterConfig(BaseModel):
    """The Router's hot `user_config`."""

    variants: dict[str, VariantSpec] = Field(
        default_factory=lambda: {
            "champion": VariantSpec(weight=0.9, tabular="champion"),
            "challenger": VariantSpec(weight=0.1, tabular="challenger"),
        }
    )
    shadow: bool = False
    alias_refresh_s: float = Field(30.0, ge=0, description="0 turns alias polling off.")
    medium_risk: float = Field(0.10, gt=0, lt=1)
    high_risk: float = Field(0.25, gt=0, lt=1)

    @field_validator("variants")
    @classmethod
    def _some_weight(cls, variants: dict[str, VariantSpec]) -> dict[str, VariantSpec]:
        if not variants or sum(v.weight for v in variants.values()) <= 0:
            raise ValueError("variants: at least one variant needs a positive weight")
        return variants


class NoteBatchConfig(BaseModel):
    """The NoteScorer's hot `user_config`."""

    max_batch_size: int = Field(16, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.02, ge=0, le=5)


class ModelLoader(Protocol):
    def resolve(self, name: str, ref: str) -> str: ...
    def tabular(self, name: str, version: str) -> Any: ...
    def note(self, name: str, version: str) -> Any: ...


class RegistryLoader:
    """Models from the MLflow registry (tracking URI from the environment or the data dir)."""

    def __init__(self, data_dir: str | None = None):
        from data.config import Settings
        from ml import registry

        settings = Settings.from_env()
        if data_dir:
            settings = settings.model_copy(update={"data_dir": Path(data_dir)})
        registry.configure(settings)

    def resolve(self, name: str, ref: str) -> str:
        from ml import registry

        return registry.resolve(name, ref)

    def tabular(self, name: str, version: str) -> Any:
        from ml import registry

        return registry.load_version(name, version).unwrap_python_model().predictor

    def note(self, name: str, version: str) -> Any:
        from ml import registry

        return registry.load_version(name, version).unwrap_python_model().predictor


class _ModelCache:
    """Versions loaded on demand (once, even under concurrent requests), the newest few kept."""

    def __init__(self, load):
        self._load = load
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def get(self, version: str) -> Any:
        if version in self._models:
            self._models.move_to_end(version)
            return self._models[version]
        async with self._locks[version]:
            if version not in self._models:
                started = time.perf_counter()
                self._models[version] = await asyncio.to_thread(self._load, version)
                log.info("loaded version %s in %.1f s", version, time.perf_counter() - started)
                while len(self._models) > MODELS_KEPT:
                    self._models.popitem(last=False)
        return self._models[version]


def _threads() -> int:
    """Torch threads = the CPUs Ray gave this replica (at least 1)."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


# Defaults match serve/config.yaml (which overrides them): small CPU shares, so the whole
# graph fits a 2-CPU machine; the note scorer gets a full CPU for its forward passes.
@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class TabularScorer:
    """The registered XGBoost model: calibrated risk and the top contributing features."""

    def __init__(
        self, model_name: str = TABULAR_MODEL, data_dir: str | None = None, loader: ModelLoader | None = None
    ):
        self.loader = loader or RegistryLoader(data_dir)
        self.model_name = model_name
        self.models = _ModelCache(lambda version: self.loader.tabular(model_name, version))

    async def warm(self, versions: list[str]) -> None:
        for version in versions:
            await self.models.get(version)

    async def score(self, records: list[PatientRecord], version: str, top_k: int = 5) -> list[TabularResult]:
        predictor = await self.models.get(version)
        return await asyncio.to_thread(score_tabular, predictor, records, top_k)


@serve.deployment(ray_actor_options={"num_cpus": 1}, user_config=NoteBatchConfig().model_dump())
class NoteScorer:
    """The registered note model; concurrent requests are batched by `@serve.batch`."""

    def __init__(
        self, model_name: str = NOTE_MODEL, data_dir: str | None = None, loader: ModelLoader | None = None
    ):
        import torch
        import transformers

        torch.set_num_threads(_threads())
        # transformers imports lazily and not thread-safely: resolve the classes the loader
        # threads need here, once, before two loads can race.
        _ = transformers.AutoModelForSequenceClassification, transformers.AutoTokenizer
        self.loader = loader or RegistryLoader(data_dir)
        self.models = _ModelCache(lambda version: self.loader.note(model_name, version))

    def reconfigure(self, config: dict) -> None:
        settings = NoteBatchConfig.model_validate(config or {})
        self.score.set_max_batch_size(settings.max_batch_size)
        self.score.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    async def warm(self, versions: list[str]) -> None:
        for version in versions:
            await self.models.get(version)

    async def combiner(self, version: str) -> dict | None:
        """The tabular + note weights stored with this note model version, if any."""
        return (await self.models.get(version)).extra.get("combiner")

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def score(self, items: list[tuple[str, str]]) -> list[float]:
        """(version, note text) -> calibrated note risk, one forward pass per version in the batch."""
        out = [0.0] * len(items)
        by_version: dict[str, list[int]] = defaultdict(list)
        for i, (version, _) in enumerate(items):
            by_version[version].append(i)
        for version, rows in by_version.items():
            predictor = await self.models.get(version)
            texts = [items[i][1] for i in rows]
            risks = await asyncio.to_thread(predictor.risk, texts, len(texts))
            for i, r in zip(rows, risks, strict=True):
                out[i] = float(r)
        return out


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Combiner:
    """One risk per record from both scorers, with the weights stored with the note model."""

    def __init__(self, tabular: DeploymentHandle, note: DeploymentHandle):
        self.tabular = tabular
        self.note = note
        self.weights: dict[str, Any] = {}

    async def _weights(self, note_version: str):
        from ml.combine import RiskCombiner

        if note_version not in self.weights:
            stored = await self.note.combiner.remote(note_version)
            self.weights[note_version] = RiskCombiner(**stored) if stored else RiskCombiner()
        return self.weights[note_version]

    async def score(
        self, records: list[PatientRecord], versions: dict[str, str | None], top_k: int = 5
    ) -> list[Scored]:
        tabular = self.tabular.score.remote(records, versions["tabular"], top_k)
        texts = [r.note_text() for r in records]
        note_version = versions.get("note")
        note_calls = [self.note.score.remote((note_version, t)) for t in texts if t] if note_version else []
        combiner = await self._weights(note_version) if note_calls else None
        note_risks = iter(await asyncio.gather(*note_calls))
        return [
            combine(result, next(note_risks) if text and note_calls else None, combiner)
            for result, text in zip(await tabular, texts, strict=True)
        ]


api = FastAPI(
    title="MediScale readmission risk",
    version="0.1.0",
    description="30-day readmission risk from a patient record and an optional discharge note.",
)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the field and the rule, without echoing the input (it may be a note or a
    patient's values: FastAPI's default body repeats it)."""
    detail = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": detail})


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug must not leak a stack trace (or patient data) to the client."""
    log.error("unhandled %s on %s", type(exc).__name__, request.url.path)
    return JSONResponse(status_code=500, content={"detail": "internal error; see the server log"})


def _request_id(request: Request) -> str:
    """The client's x-request-id (Serve's proxy passes it through, or sets a fresh one, and
    echoes it on the response)."""
    given = request.headers.get("x-request-id")
    if given is None:
        return uuid.uuid4().hex
    if not re.fullmatch(REQUEST_ID_PATTERN, given):
        raise HTTPException(422, "x-request-id: use 1-128 letters, digits or . _ : -")
    return given


def assignment_point(key: str) -> float:
    """A stable point in [0, 1) for a patient or request id (the same in every replica)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick_variant(key: str, weights: dict[str, float]) -> str:
    total = sum(weights.values())
    point, edge = assignment_point(key) * total, 0.0
    names = sorted(n for n, w in weights.items() if w > 0)  # order-free: same pick however listed
    for name in names:
        edge += weights[name]
        if point < edge:
            return name
    return names[-1]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, user_config=RouterConfig().model_dump())
@serve.ingress(api)
class Router:
    """HTTP front door: validation, variant assignment, prediction log, feedback."""

    def __init__(
        self,
        combiner: DeploymentHandle,
        tabular: DeploymentHandle,
        note: DeploymentHandle,
        args: dict | None = None,
        loader: ModelLoader | None = None,
    ):
        from serve.store import PredictionStore

        self.args = AppArgs.model_validate(args or {})
        self.combiner, self.tabular, self.note = combiner, tabular, note
        self.loader = loader or RegistryLoader(self.args.data_dir)
        self.store = PredictionStore(self._store_url(), store_note_text=self.args.store_note_text)
        self.config = RouterConfig()
        self.resolved: dict[str, dict[str, str]] = {}  # variant -> {"tabular": v, "note": v}
        self.problem: str | None = "starting"
        self.served: defaultdict[str, int] = defaultdict(int)
        self._refresher: asyncio.Task | None = None
        self._switch = asyncio.Lock()
        self._background: set[asyncio.Task] = set()

    def _store_url(self) -> str | None:
        if self.args.store_url or os.environ.get("MEDISCALE_STORE_URL"):
            return self.args.store_url or os.environ["MEDISCALE_STORE_URL"]
        if self.args.data_dir:
            return f"sqlite:///{Path(self.args.data_dir).resolve() / 'predictions.db'}"
        return None  # the store's own default: SQLite in the data dir

    # ------------------------------------------------------------------ configuration

    async def reconfigure(self, config: dict) -> None:
        self.config = RouterConfig.model_validate(config or {})
        await self._refresh()
        if self._refresher is None and self.config.alias_refresh_s > 0:
            self._refresher = asyncio.create_task(self._refresh_forever())

    async def _refresh(self) -> None:
        """Resolve every variant's references; load new versions everywhere; then switch."""
        async with self._switch:
            try:
                resolved = {}
                for name, spec in self.config.variants.items():
                    if spec.weight <= 0 and not self.config.shadow:
                        continue
                    resolved[name] = {
                        "tabular": await asyncio.to_thread(
                            self.loader.resolve, self.args.tabular_model, spec.tabular
                        ),
                        "note": None
                        if spec.note is None
                        else await asyncio.to_thread(self.loader.resolve, self.args.note_model, spec.note),
                    }
                if resolved != self.resolved:
                    await self.tabular.warm.remote(sorted({v["tabular"] for v in resolved.values()}))
                    notes = sorted({v["note"] for v in resolved.values() if v["note"] is not None})
                    if notes:
                        await self.note.warm.remote(notes)
                    log.info("variants now %s", resolved)
                self.resolved, self.problem = resolved, None
            except Exception as exc:  # keep serving the previous versions, and say why
                self.problem = f"models not ready: {type(exc).__name__}: {exc}"
                log.error("variant refresh failed: %s", self.problem)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.alias_refresh_s or 30.0)
            if self.config.alias_refresh_s > 0:
                await self._refresh()

    def _ready(self) -> dict[str, dict[str, str]]:
        if not self.resolved:
            raise HTTPException(503, self.problem or "models not loaded")
        return self.resolved

    def _weights(self, resolved: dict[str, dict[str, str]]) -> dict[str, float]:
        return {n: s.weight for n, s in self.config.variants.items() if n in resolved and s.weight > 0}

    # ------------------------------------------------------------------ scoring

    def _check_note(self, record: PatientRecord, where: str = "clinical_note") -> None:
        size = len(record.clinical_note or "")
        if size > self.args.max_note_chars:
            raise HTTPException(413, f"{where}: {size} characters; the limit is {self.args.max_note_chars}")

    async def _score(self, records: list[PatientRecord], request_ids: list[str]) -> list[Prediction]:
        from serve.store import DuplicateRequest

        resolved = self._ready()
        weights = self._weights(resolved)
        if not weights:
            raise HTTPException(503, "no variant has a positive weight with loaded models")
        variants = [
            pick_variant(r.patient_id or rid, weights) for r, rid in zip(records, request_ids, strict=True)
        ]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, variant in enumerate(variants):
            groups[variant].append(i)
        scored: list[Scored | None] = [None] * len(records)
        calls = {
            v: self.combiner.score.remote([records[i] for i in rows], resolved[v], self.args.top_factors)
            for v, rows in groups.items()
        }
        try:
            for variant, rows in groups.items():
                for i, result in zip(rows, await calls[variant], strict=True):
                    scored[i] = result
        except Exception as exc:
            log.error("scoring failed: %s", type(exc).__name__)
            raise HTTPException(503, f"model unavailable ({type(exc).__name__})") from None
        predictions, rows_out = [], []
        for record, rid, variant, result in zip(records, request_ids, variants, scored, strict=True):
            prediction = to_prediction(
                rid,
                result,
                variant,
                dict(resolved[variant]),
                self.config.medium_risk,
                self.config.high_risk,
                record.note_text() is not None,
            )
            predictions.append(prediction)
            rows_out.append(to_store_row(prediction, record, result))
        try:
            await asyncio.to_thread(self.store.log_predictions, rows_out)
        except DuplicateRequest as exc:
            raise HTTPException(409, str(exc)) from None
        for variant in variants:
            self.served[variant] += 1
        if self.config.shadow:
            task = asyncio.create_task(self._shadow(records, request_ids, variants, resolved))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return predictions

    async def _shadow(self, records, request_ids, variants, resolved) -> None:
        """Score with another variant and log it; never returned, never awaited by a client."""
        try:
            for record, rid, variant in zip(records, request_ids, variants, strict=True):
                others = [n for n in resolved if n != variant]
                if not others:
                    continue
                other = (
                    others[0] if len(others) == 1 else pick_variant(f"shadow:{rid}", {n: 1.0 for n in others})
                )
                [result] = await self.combiner.score.remote([record], resolved[other], 0)
                versions = {k: v for k, v in resolved[other].items() if v is not None}
                await asyncio.to_thread(self.store.log_shadow, rid, other, versions, result.risk)
        except Exception as exc:  # a shadow failure must never touch the served path
            log.warning("shadow scoring failed: %s", type(exc).__name__)

    # ------------------------------------------------------------------ HTTP

    @api.post("/predict", response_model=Prediction)
    async def predict(self, record: PatientRecord, request: Request) -> Prediction:
        """One record -> risk, band, variant, model versions, components and top factors."""
        request_id = _request_id(request)
        self._check_note(record)
        [prediction] = await self._score([record], [request_id])
        return prediction

    @api.post("/predict/batch", response_model=BatchPrediction)
    async def predict_batch(self, batch: BatchRequest, request: Request) -> BatchPrediction:
        """Many records in one call; request ids are `<x-request-id or random>-<index>`."""
        base = _request_id(request)
        for i, record in enumerate(batch.records):
            self._check_note(record, f"records[{i}].clinical_note")
        ids = [f"{base}-{i}" for i in range(len(batch.records))]
        return BatchPrediction(predictions=await self._score(batch.records, ids))

    @api.post("/feedback")
    async def feedback(self, feedback: Feedback) -> dict:
        """The observed outcome of a prediction; one per request id (a second one is refused)."""
        from serve.store import DuplicateFeedback, UnknownRequest

        try:
            row = await asyncio.to_thread(
                self.store.add_feedback, feedback.request_id, feedback.outcome, feedback.source
            )
        except UnknownRequest:
            raise HTTPException(404, f"request_id {feedback.request_id!r}: no such prediction") from None
        except DuplicateFeedback:
            raise HTTPException(
                409, f"request_id {feedback.request_id!r}: feedback already recorded"
            ) from None
        return {
            "request_id": feedback.request_id,
            "outcome": feedback.outcome,
            "risk": row.get("risk"),
            "variant": row.get("variant"),
        }

    @api.get("/variants")
    async def variants(self) -> dict:
        """Weights, model references and the versions they resolve to, and request counts."""
        counts = await asyncio.to_thread(self.store.counts_by_variant)
        return {
            "variants": {
                name: {
                    "weight": spec.weight,
                    "tabular": spec.tabular,
                    "note": spec.note,
                    "versions": self.resolved.get(name),
                }
                for name, spec in self.config.variants.items()
            },
            "shadow": self.config.shadow,
            "requests": counts,
            "requests_this_replica": dict(self.served),
            "models": {"tabular": self.args.tabular_model, "note": self.args.note_model},
            "replica": {"pid": os.getpid(), "problem": self.problem},
        }

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 when the models are loaded; 503 with the reason otherwise."""
        if self.resolved and self.problem is None:
            return JSONResponse({"status": "ok", "variants": self.resolved})
        status = 200 if self.resolved else 503
        return JSONResponse(
            {"status": "degraded" if self.resolved else "unhealthy", "reason": self.problem},
            status_code=status,
        )


def build_app(args: dict | None = None) -> serve.Application:
    """The application graph; `args` are AppArgs (serve/config.yaml's `args:`)."""
    settings = AppArgs.model_validate(args or {})
    tabular = TabularScorer.bind(settings.tabular_model, settings.data_dir)
    note = NoteScorer.bind(settings.note_model, settings.data_dir)
    combiner = Combiner.bind(tabular, note)
    return Router.bind(combiner, tabular, note, settings.model_dump())


app = build_app()
