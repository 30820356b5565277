"""The HTTP front door (FastAPI under `@serve.ingress`): validation, sticky variant assignment,
the prediction log, shadow scoring and feedback.

(No `from __future__ import annotations` here: FastAPI must see the endpoint annotations as
real types through Serve's ingress wrapper, or it takes the body for query parameters.)
"""

import asyncio
import difflib
import functools
import hashlib
import logging
import os
import re
import time
import uuid
from collections import defaultdict
from typing import Annotated

from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve import metrics
from serve.auth import KEY_STATE, REQUEST_ID_STATE, AuthGate, GateContext
from serve.auth import policy as access_policy
from serve.commit import GroupCommit
from serve.loading import ModelLoader, RegistryLoader
from serve.records import (
    MAX_BATCH_ID,
    MAX_BODY_BYTES,
    REQUEST_ID_PATTERN,
    STORED_ID_PATTERN,
    BatchPrediction,
    BatchRequest,
    Feedback,
    FeedbackCorrected,
    FeedbackCorrection,
    FeedbackEvent,
    FeedbackReceipt,
    PatientRecord,
    Prediction,
    Problem,
    StoredPrediction,
    child_id,
    risk_band,
)
from serve.scorers import CombinedScorer
from serve.scoring import Scored, to_prediction, to_store_row
from serve.settings import AppArgs, RouterConfig

log = logging.getLogger("ray.serve")


api = FastAPI(
    title="MediScale readmission risk",
    version="0.1.0",
    description="30-day readmission risk from a patient record and an optional discharge note.",
    max_body_size=MAX_BODY_BYTES,  # 413 while the body streams in, before any JSON parsing
)

STORE_PING_S = 3.0  # /healthz waits this long for the store's `SELECT 1`
MAX_ERRORS = 20  # validation errors listed in a 422 body (the count of the rest is given)
VARIANT_STATE = "mediscale_variant"  # request.state key: the variant a handler served

# A path's request id, checked by FastAPI like any other field (a 422 of the one documented shape).
StoredId = Annotated[
    str,
    Path(
        pattern=STORED_ID_PATTERN,
        description="An id this service stored: an x-request-id, or a batch record's `<id>~<index>`.",
    ),
]
_GATE_REFUSALS = (401, 403, 429)  # any key-protected endpoint (serve/auth.py)
_MEANINGS = {
    400: "The body could not be read as text (not UTF-8).",
    401: "No API key, or one that is unknown or revoked.",
    403: "The key's role may not call this endpoint.",
    404: "No such prediction (or, for a correction, no outcome yet).",
    409: "The request id is already stored; GET /predictions/{request_id} returns its answer.",
    413: "A note or the body is over its limit.",
    429: "Over the key's rate; see Retry-After.",
    503: "Models not loaded or the store not answering; nothing was stored, retry is safe.",
}


def problems(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` for an endpoint's refusals: the gate's and its own, each a `Problem`
    (a client can tell them apart before it meets one)."""
    return {s: {"model": Problem, "description": _MEANINGS[s]} for s in sorted({*_GATE_REFUSALS, *statuses})}


def endpoint_name(path: str) -> str:
    """A bounded endpoint label from the request path (under any route prefix); never an id."""
    return access_policy("GET", path).endpoint


def _in_flight(scope) -> list[int]:
    """This replica's count of HTTP requests being answered, kept on the app object it serves
    (the one thing the middleware and the /healthz handler surely share)."""
    state = scope["app"].state
    if not hasattr(state, "in_flight"):
        state.in_flight = [0]
    return state.in_flight


class RequestMetrics:
    """Pure ASGI middleware (cheap: no extra task): counts every HTTP request by endpoint, variant
    and status code and times it, including 422s FastAPI refuses before a handler runs. The
    variant is what the handler left in `request.state` (Starlette keeps it in scope["state"])."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500  # an exception escaping the app is a 500
        counter = _in_flight(scope)
        counter[0] += 1

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            counter[0] -= 1
            try:
                variant = (scope.get("state") or {}).get(VARIANT_STATE)
                endpoint = endpoint_name(scope.get("path", ""))
            except Exception:  # never let the bookkeeping fail the request
                variant, endpoint = None, "other"
            metrics.request_done(endpoint, variant, status, time.perf_counter() - started)


# This replica's auth context, set when its Router starts (one Router per replica process).
_gate: list[GateContext] = []
# Outermost last: RequestMetrics sees every answer, the gate's refusals included.
api.add_middleware(AuthGate, context=lambda: _gate[0] if _gate else None)
api.add_middleware(RequestMetrics)


def _printable(value: object, limit: int = 300) -> str:
    """Text that encodes as UTF-8 JSON (a lone surrogate in a 422 once made it a 500)."""
    text = str(value if value is not None else "")[:limit]
    return text.encode("utf-8", "replace").decode("utf-8")


@functools.cache
def _known_names() -> frozenset[str]:
    """Every field name of the API's bodies (and pydantic's union tags), for 422 `loc`s."""
    from serve.records import Labs, Vitals

    names = {"body", "path", "header", "x-request-id", "float", "list[float]", "int", "str", "bool"}
    for model in (PatientRecord, Vitals, Labs, BatchRequest, Feedback, FeedbackCorrection):
        names |= set(model.model_fields)
    return frozenset(names)


def _error(e: dict) -> dict:
    """One validation error as the client sees it: a known field name or index, the rule, and
    never the client's own text. An unknown key may be anything (a patient's name as a key), so
    it is named `<unknown field>`, with the closest real field as a hint."""
    known = _known_names()
    loc: list[str | int] = []
    hint = None
    for part in e.get("loc", ()):
        if isinstance(part, int) or part in known:
            loc.append(part)
        else:
            loc.append("<unknown field>")
            close = difflib.get_close_matches(str(part), sorted(known), n=1, cutoff=0.75)
            hint = close[0] if close else hint
    msg = _printable(e.get("msg"))
    if hint is not None:
        msg += f"; did you mean {hint!r}?"
    return {"loc": loc, "msg": msg, "type": _printable(e.get("type"))}


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the field and the rule, without echoing the input (it may be a note or a
    patient's values: FastAPI's default body repeats it)."""
    errors = exc.errors()
    detail = [_error(e) for e in errors[:MAX_ERRORS]]
    body: dict = {"detail": detail}
    if len(errors) > MAX_ERRORS:  # a 10,000-record batch must not come back as 10,000 errors
        body["more_errors"] = len(errors) - MAX_ERRORS
    return JSONResponse(status_code=422, content=body)


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug must not leak a stack trace (or patient data) to the client."""
    log.error("unhandled %s on %s", type(exc).__name__, request.url.path)
    return JSONResponse(status_code=500, content={"detail": "internal error; see the server log"})


def _request_id(request: Request, limit: int = 128) -> str:
    """The client's x-request-id (Serve's proxy passes it through, or sets a fresh one, and
    echoes it on the response); a batch's leaves room for its records' `~<index>`."""
    given = request.headers.get("x-request-id")
    if given is None:
        given = uuid.uuid4().hex
    elif not re.fullmatch(REQUEST_ID_PATTERN, given) or len(given) > limit:
        # the shape of every other 422 (the spec's HTTPValidationError), not a string detail
        rule = f"use 1-{limit} letters, digits or . _ : -"
        error = {"loc": ("header", "x-request-id"), "msg": rule, "type": "value_error"}
        raise RequestValidationError([error])
    setattr(request.state, REQUEST_ID_STATE, given)  # for the audit row
    return given


def _key_name(request: Request) -> str | None:
    """The caller's key name (the auth gate put its record in the request state)."""
    key = getattr(request.state, KEY_STATE, None)
    return getattr(key, "name", None)


def _cause(exc: BaseException) -> BaseException:
    """The scorer's own exception inside Ray's wrapper (whose text is a remote traceback)."""
    from ray.exceptions import RayTaskError

    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
    return cause if cause is not None else exc


def _store_down(exc: Exception) -> HTTPException:
    """503 for a store that did not answer: says which kind of failure and that nothing of this
    call was written, so the same request (same x-request-id, same feedback) may be sent again."""
    return HTTPException(503, f"{exc}; nothing was stored, it is safe to retry")


def _already_stored(request_ids: list[str]) -> str:
    """409's detail: how many ids, and where the stored answers are (ids are the client's own)."""
    return (
        f"request_id already stored ({len(request_ids)} of this request); the stored row is kept: "
        "GET /predictions/{request_id} returns it"
    )


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
        tabular: DeploymentHandle,
        note: DeploymentHandle,
        args: dict | None = None,
        loader: ModelLoader | None = None,
    ):
        from data.config import Settings
        from serve.store import PredictionStore, StoreUnavailable

        settings = Settings.from_env()
        settings.check_production()  # production without its secrets does not start
        self.args = AppArgs.model_validate(args or {})
        self.tabular, self.note = tabular, note
        self.scorers = CombinedScorer(tabular, note)  # the combination runs here: no extra hop
        self.loader = loader or RegistryLoader(self.args.data_dir)
        self.store = PredictionStore(self._store_url(), store_note_text=self.args.store_note_text)
        # predictions of concurrent requests committed in one transaction (serve/commit.py)
        self.commits = GroupCommit(self.store.log_predictions, shared=(StoreUnavailable,))
        self._open_gate(settings)
        self.config = RouterConfig()
        self.resolved: dict[str, dict[str, str]] = {}  # variant -> {"tabular": v, "note": v}
        self.overrides: dict = {}  # variant -> serve.control.Override (the newest of each)
        self.problem: str | None = "starting"
        self.served: defaultdict[str, int] = defaultdict(int)
        self._refresher: asyncio.Task | None = None
        self._switch = asyncio.Lock()
        self._background: set[asyncio.Task] = set()

    def _open_gate(self, settings) -> None:
        """Keys from the key file or this store's `api_keys`; audit rows into this store."""
        from serve.audit import AuditLog
        from serve.keys import Keyring, open_source
        from serve.ratelimit import LimiterClient

        keyring = Keyring(open_source(settings, self.store))
        if not keyring.source.records():
            log.warning("no API keys yet: every call but /healthz gets 401 (python -m serve keys create)")
        limiter = LimiterClient(settings.rate_per_minute)
        _gate[:] = [GateContext(keyring=keyring, audit=AuditLog(self.store), limiter=limiter)]

    def _store_url(self) -> str:
        """The app's `store_url`, else the one settings fallback (in the app's data dir if given)."""
        from data.config import Settings

        return self.args.store_url or Settings.from_env().resolved_store_url(self.args.data_dir)

    # ------------------------------------------------------------------ configuration

    async def reconfigure(self, config: dict) -> None:
        self.config = RouterConfig.model_validate(config or {})
        await self._refresh()
        if self._refresher is None and self.config.alias_refresh_s > 0:
            self._refresher = asyncio.create_task(self._refresh_forever())

    async def _refresh(self) -> None:
        """Resolve every variant's references; load new versions everywhere; then switch.
        Also reads the routing overrides (a rollback's weight 0) from the store."""
        from serve.control import latest_overrides

        async with self._switch:
            try:
                self.overrides = await asyncio.to_thread(latest_overrides, self.store)
            except Exception as exc:  # keep the previous overrides: a store hiccup must not reroute
                log.error("routing overrides not read: %s", type(exc).__name__)
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
                cause = _cause(exc)
                self.problem = f"models not ready: {type(cause).__name__}: {cause}"
                log.error("variant refresh failed: %s", self.problem)
        await asyncio.to_thread(self._publish_monitoring)

    def _publish_monitoring(self) -> None:
        """The newest drift share of each variant and the newest decision, as gauges (read from the
        store at each refresh; a store hiccup only leaves the previous values)."""
        from serve.control import latest_decision, latest_event

        try:
            for name in self.config.variants:
                event = latest_event(self.store, "drift", name)
                if event is not None and event.drift_share is not None:
                    metrics.drift_share(name, event.drift_share)
            decision = latest_decision(self.store)
            if decision is not None:
                metrics.last_decision(decision["id"], decision["outcome"], decision.get("created_at"))
        except Exception as exc:
            log.warning("monitoring gauges not refreshed: %s", type(exc).__name__)

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
        """Configured weights with overrides applied, for variants whose models are loaded."""
        from serve.control import effective_weights

        configured = {n: s.weight for n, s in self.config.variants.items() if n in resolved}
        weights = effective_weights(configured, resolved, self.overrides)
        return {n: w for n, w in weights.items() if w > 0}

    # ------------------------------------------------------------------ scoring

    def _check_note(self, record: PatientRecord, where: str = "clinical_note") -> None:
        size = len(record.clinical_note or "")
        if size > self.args.max_note_chars:
            raise HTTPException(413, f"{where}: {size} characters; the limit is {self.args.max_note_chars}")

    async def _check_new(self, request_ids: list[str]) -> None:
        """409 before any model runs when an id is already stored (the stored row is kept)."""
        from serve.store import StoreUnavailable

        try:
            taken = await asyncio.to_thread(self.store.existing_request_ids, request_ids)
        except StoreUnavailable as exc:
            raise _store_down(exc) from None
        if taken:
            raise HTTPException(409, _already_stored(taken))

    async def _score(
        self, records: list[PatientRecord], request_ids: list[str], request: Request | None = None
    ) -> list[Prediction]:
        from serve.store import DuplicateRequest, StoreUnavailable

        resolved = self._ready()
        await self._check_new(request_ids)
        weights = self._weights(resolved)
        if not weights:
            raise HTTPException(503, "no variant has a positive weight with loaded models")
        variants = [
            pick_variant(r.patient_id or rid, weights) for r, rid in zip(records, request_ids, strict=True)
        ]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, variant in enumerate(variants):
            groups[variant].append(i)
        if request is not None:
            setattr(request.state, VARIANT_STATE, variants[0] if len(groups) == 1 else "mixed")
        scored: list[Scored | None] = [None] * len(records)
        calls = {
            v: asyncio.ensure_future(
                self.scorers.score([records[i] for i in rows], resolved[v], self.args.top_factors, v)
            )
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
        started = time.perf_counter()
        try:
            await self.commits.commit(rows_out)
        except DuplicateRequest as exc:
            raise HTTPException(409, _already_stored(exc.request_ids)) from None
        except StoreUnavailable as exc:
            raise _store_down(exc) from None
        finally:
            for variant in groups:
                metrics.stage_done(variant, "store", time.perf_counter() - started)
        for prediction in predictions:
            self.served[prediction.variant] += 1
            metrics.prediction(prediction.variant, prediction.risk, prediction.risk_band)
        if self.config.shadow:
            if len(self._background) >= self.config.max_shadow_tasks:  # overloaded: shadows are optional
                metrics.shadow_dropped("overload", len(records))
            else:
                served = [p.risk for p in predictions]
                task = asyncio.create_task(self._shadow(records, request_ids, variants, resolved, served))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        return predictions

    async def _shadow(self, records, request_ids, variants, resolved, served) -> None:
        """Score with another variant and log it; never returned, never awaited by a client.
        One CombinedScorer call per other variant, as for the served scores. A failure loses only what
        it touches (one variant's group, or one record's row), counted as dropped."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, (rid, variant) in enumerate(zip(request_ids, variants, strict=True)):
            others = [n for n in resolved if n != variant]
            if others:
                other = (
                    others[0] if len(others) == 1 else pick_variant(f"shadow:{rid}", {n: 1.0 for n in others})
                )
                groups[other].append(i)
        medium, high = self.config.medium_risk, self.config.high_risk
        for other, rows in groups.items():
            try:
                results = await self.scorers.score([records[i] for i in rows], resolved[other], 0, other)
            except Exception as exc:  # a shadow failure must never touch the served path
                log.warning("shadow scoring failed: %s", type(exc).__name__)
                metrics.shadow_dropped("error", len(rows))
                continue
            versions = {k: v for k, v in resolved[other].items() if v is not None}
            for i, result in zip(rows, results, strict=True):
                try:
                    await asyncio.to_thread(
                        self.store.log_shadow, request_ids[i], other, versions, result.risk
                    )
                except Exception as exc:
                    log.warning("shadow score not stored: %s", type(exc).__name__)
                    metrics.shadow_dropped("error")
                    continue
                same = risk_band(served[i], medium, high) == risk_band(result.risk, medium, high)
                metrics.shadow(variants[i], other, served[i], result.risk, same)

    # ------------------------------------------------------------------ HTTP

    @api.post("/predict", response_model=Prediction, responses=problems(400, 409, 413, 503))
    async def predict(self, record: PatientRecord, request: Request) -> Prediction:
        """One record -> risk, band, variant, model versions, components and top factors."""
        request_id = _request_id(request)
        self._check_note(record)
        [prediction] = await self._score([record], [request_id], request)
        return prediction

    @api.post("/predict/batch", response_model=BatchPrediction, responses=problems(400, 409, 413, 503))
    async def predict_batch(self, batch: BatchRequest, request: Request) -> BatchPrediction:
        """Many records in one call; their request ids are `<x-request-id or random>~<index>`
        (a namespace no single prediction's id can enter)."""
        base = _request_id(request, MAX_BATCH_ID)
        for i, record in enumerate(batch.records):
            self._check_note(record, f"records[{i}].clinical_note")
        ids = [child_id(base, i) for i in range(len(batch.records))]
        return BatchPrediction(predictions=await self._score(batch.records, ids, request))

    @api.get("/predictions/{request_id}", response_model=StoredPrediction, responses=problems(404, 503))
    async def prediction(self, request_id: StoredId) -> StoredPrediction:
        """A stored prediction by request id: what a client that timed out (or got 409 on its
        retry) was answered. No features, note or patient key."""
        from serve.store import StoreUnavailable

        try:
            row = await asyncio.to_thread(self.store.get, request_id)
        except StoreUnavailable as exc:
            raise _store_down(exc) from None
        if row is None:
            raise HTTPException(404, "request_id: no such prediction")
        return StoredPrediction.from_row(row)

    @api.post("/feedback", response_model=FeedbackReceipt, responses=problems(400, 404, 409, 413, 503))
    async def feedback(self, feedback: Feedback, request: Request) -> FeedbackReceipt:
        """The observed outcome of a prediction; one per request id (a second one is refused)."""
        from serve.store import DuplicateFeedback, StoreUnavailable, UnknownRequest

        try:
            row = await asyncio.to_thread(
                self.store.add_feedback,
                feedback.request_id,
                feedback.outcome,
                feedback.source,
                key_name=_key_name(request),
            )
        except UnknownRequest:
            raise HTTPException(404, "request_id: no such prediction") from None
        except DuplicateFeedback:
            raise HTTPException(
                409,
                "request_id: feedback already recorded; a correction is PUT /feedback/{request_id} "
                "(role admin), which keeps the history",
            ) from None
        except StoreUnavailable as exc:
            raise _store_down(exc) from None
        setattr(request.state, VARIANT_STATE, row.get("variant"))
        metrics.feedback(row.get("variant"), feedback.outcome)
        return FeedbackReceipt(
            request_id=feedback.request_id,
            outcome=feedback.outcome,
            risk=row.get("risk"),
            variant=row.get("variant"),
        )

    @api.put(
        "/feedback/{request_id}",
        response_model=FeedbackCorrected,
        responses=problems(400, 404, 413, 503),
    )
    async def correct_feedback(
        self, request_id: StoredId, correction: FeedbackCorrection, request: Request
    ) -> FeedbackCorrected:
        """Correct a recorded outcome (role admin); every earlier outcome stays in the history."""
        from serve.store import NoFeedbackYet, StoreUnavailable, UnknownRequest

        try:
            row = await asyncio.to_thread(
                self.store.correct_feedback,
                request_id,
                correction.outcome,
                correction.reason,
                key_name=_key_name(request),
                source=correction.source,
            )
            history = await asyncio.to_thread(self.store.feedback_history, request_id)
        except UnknownRequest:
            raise HTTPException(404, "request_id: no such prediction") from None
        except NoFeedbackYet:
            raise HTTPException(404, "request_id: no outcome to correct yet (POST /feedback first)") from None
        except StoreUnavailable as exc:
            raise _store_down(exc) from None
        setattr(request.state, VARIANT_STATE, row.get("variant"))
        return FeedbackCorrected(
            request_id=request_id,
            outcome=correction.outcome,
            history=[
                FeedbackEvent(
                    kind=h["kind"],
                    outcome=h["outcome"],
                    key_name=h["key_name"],
                    reason=h["reason"],
                    at=h["created_at"],
                )
                for h in history
            ],
        )

    def _override_view(self, name: str) -> dict | None:
        from serve.control import versions_key

        override = self.overrides.get(name)
        if override is None:
            return None
        return {
            "weight": override.weight,
            "versions": override.model_versions,
            "decision_id": override.decision_id,
            "reason": override.reason,
            "set_at": override.created_at.isoformat() if override.created_at else None,
            "applies": override.weight is not None
            and versions_key(self.resolved.get(name)) == versions_key(override.model_versions),
        }

    @api.get("/variants", responses=problems())
    async def variants(self) -> dict:
        """Weights, model references and the versions they resolve to, and request counts."""
        counts = await asyncio.to_thread(self.store.counts_by_variant)
        effective = self._weights(self.resolved) if self.resolved else {}
        return {
            "variants": {
                name: {
                    "weight": spec.weight,
                    "effective_weight": effective.get(name, 0.0),
                    "override": self._override_view(name),
                    "tabular": spec.tabular,
                    "note": spec.note,
                    "versions": self.resolved.get(name),
                }
                for name, spec in self.config.variants.items()
            },
            "shadow": self.config.shadow,
            "risk_bands": {"medium": self.config.medium_risk, "high": self.config.high_risk},
            "requests": counts,
            "requests_this_replica": dict(self.served),
            "models": {"tabular": self.args.tabular_model, "note": self.args.note_model},
            "replica": {"pid": os.getpid(), "problem": self.problem},
        }

    @api.get(
        "/healthz",
        responses={503: {"description": "Not ready: models not loaded, store not answering, or saturated."}},
    )
    async def healthz(self, request: Request) -> JSONResponse:
        """200 when the models are loaded and the store answers; 503 with the reason otherwise
        (a replica that cannot commit a prediction cannot serve one)."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.ping), STORE_PING_S)
        except Exception as exc:
            reason = f"prediction store unreachable ({type(exc).__name__})"
            return JSONResponse({"status": "unhealthy", "reason": reason}, status_code=503)
        in_flight = _in_flight(request.scope)[0] - 1  # not counting this check
        if in_flight >= self.config.saturated_in_flight:
            reason = f"saturated: {in_flight} requests in flight (limit {self.config.saturated_in_flight})"
            return JSONResponse({"status": "saturated", "reason": reason, "in_flight": in_flight}, 503)
        if self.resolved and self.problem is None:
            return JSONResponse({"status": "ok", "variants": self.resolved, "in_flight": in_flight})
        status = 200 if self.resolved else 503
        return JSONResponse(
            {"status": "degraded" if self.resolved else "unhealthy", "reason": self.problem},
            status_code=status,
        )
