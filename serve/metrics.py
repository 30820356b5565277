"""The application's Prometheus metrics, through `ray.serve.metrics` (Ray exports them on each
node's metrics agent, prefixed `ray_`; Ray adds the `deployment`, `replica` and `application` tags).

One job: define the metric objects and record into them. The objects are created lazily, on the
first record inside a replica (never at import: the driver, `serve build` and the unit tests
import this module without a Ray worker). Every recording call swallows its own errors: a metric
must never fail a request. Tags have bounded cardinality only (variant, endpoint, status, stage,
band, model, version, outcome): never patient ids, request ids, note text or feature values.

`DEFINITIONS` is the registry the dashboard check reads (`exported_names`: the names Prometheus
sees, with Ray's `ray_` prefix and the `_total` / `_bucket` / `_sum` / `_count` suffixes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

log = logging.getLogger("ray.serve")

PREFIX = "mediscale_"
RAY_PREFIX = "ray_"  # Ray's exporter prefixes every application metric with this

# Seconds: a cached tabular score is a few ms, a note forward pass on CPU up to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RISK_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 ... 1.0 (Ray wants > 0)
DIFFERENCE_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
LOAD_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STAGES = ("tabular", "note", "combine", "store")
# monitor/rule.py's outcomes (not imported: the service does not load the monitor package).
OUTCOMES = ("promote", "keep_testing", "rollback", "inconclusive")
NO_VARIANT = "none"  # a request refused before a variant was assigned

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Definition:
    name: str
    kind: Kind
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    def exported(self) -> tuple[str, ...]:
        """The series names Prometheus scrapes for this metric."""
        base = RAY_PREFIX + self.name
        if self.kind == "counter":
            return (base + "_total",)
        if self.kind == "histogram":
            return (base + "_bucket", base + "_sum", base + "_count")
        return (base,)


REQUESTS = Definition(
    "mediscale_requests",
    "counter",
    "HTTP requests by endpoint, variant (none: refused before assignment; mixed: a batch over "
    "several) and status code.",
    ("endpoint", "variant", "status"),
)
REQUEST_LATENCY = Definition(
    "mediscale_request_latency_seconds",
    "histogram",
    "Whole request time in the Router, by endpoint and variant.",
    ("endpoint", "variant"),
    LATENCY_BUCKETS,
)
STAGE_LATENCY = Definition(
    "mediscale_stage_latency_seconds",
    "histogram",
    "Time per scoring stage (tabular, note, combine, store) by variant, measured where it runs.",
    ("variant", "stage"),
    LATENCY_BUCKETS,
)
RISK = Definition("mediscale_risk", "histogram", "Served risk by variant.", ("variant",), RISK_BUCKETS)
PREDICTIONS = Definition(
    "mediscale_predictions", "counter", "Served predictions by variant and risk band.", ("variant", "band")
)
SHADOW_SCORES = Definition(
    "mediscale_shadow_scores",
    "counter",
    "Shadow scores logged, by served variant and shadow variant.",
    ("variant", "shadow_variant"),
)
SHADOW_DIFFERENCE = Definition(
    "mediscale_shadow_risk_difference",
    "histogram",
    "|served risk - shadow risk| on the same record.",
    ("variant", "shadow_variant"),
    DIFFERENCE_BUCKETS,
)
SHADOW_BAND_DISAGREEMENTS = Definition(
    "mediscale_shadow_band_disagreements",
    "counter",
    "Shadow scores whose risk band differs from the served one.",
    ("variant", "shadow_variant"),
)
SHADOW_DROPPED = Definition(
    "mediscale_shadow_dropped",
    "counter",
    "Records not shadow scored, by reason: overload (too many shadow tasks in flight) or error.",
    ("reason",),
)
AUTH_REFUSED = Definition(
    "mediscale_auth_refused",
    "counter",
    "Requests refused by the auth gate, by endpoint, status (401/403/429) and where (proxy/replica).",
    ("endpoint", "status", "where"),
)
AUDIT_FAILED = Definition(
    "mediscale_audit_failed", "counter", "Access audit rows that could not be written.", ()
)
FEEDBACK = Definition(
    "mediscale_feedback",
    "counter",
    "Feedback rows stored, by variant and outcome (0/1).",
    ("variant", "outcome"),
)
MODEL_LOADS = Definition(
    "mediscale_model_loads",
    "counter",
    "Model version loads in a scorer replica, by model, version and status (ok/error).",
    ("model", "version", "status"),
)
MODEL_LOAD_SECONDS = Definition(
    "mediscale_model_load_seconds", "histogram", "Time to load a model version.", ("model",), LOAD_BUCKETS
)
DRIFT_SHARE = Definition(
    "mediscale_drift_share",
    "gauge",
    "Share of drifted features in the newest drift check of each variant (the store's monitor_events).",
    ("variant",),
)
DECISION_OUTCOME = Definition(
    "mediscale_decision_outcome",
    "gauge",
    "1 for the outcome of the newest champion/challenger decision, 0 for the others.",
    ("outcome",),
)
DECISION_ID = Definition("mediscale_decision_id", "gauge", "Id of the newest decision in the log.", ())
DECISION_TIME = Definition(
    "mediscale_decision_timestamp_seconds", "gauge", "Unix time of the newest decision.", ()
)

DEFINITIONS: tuple[Definition, ...] = (
    REQUESTS,
    REQUEST_LATENCY,
    STAGE_LATENCY,
    RISK,
    PREDICTIONS,
    SHADOW_SCORES,
    SHADOW_DIFFERENCE,
    SHADOW_BAND_DISAGREEMENTS,
    SHADOW_DROPPED,
    AUTH_REFUSED,
    AUDIT_FAILED,
    FEEDBACK,
    MODEL_LOADS,
    MODEL_LOAD_SECONDS,
    DRIFT_SHARE,
    DECISION_OUTCOME,
    DECISION_ID,
    DECISION_TIME,
)


def exported_names() -> set[str]:
    """Every series name the application's metrics appear under in Prometheus."""
    return {name for d in DEFINITIONS for name in d.exported()}


# ---------------------------------------------------------------------------- the objects

_objects: dict[str, Any] = {}
_warned: set[str] = set()


class _Unavailable:
    """Stands in for a metric Ray could not create: recording into it does nothing."""

    def inc(self, *args: Any, **kwargs: Any) -> None: ...
    def observe(self, *args: Any, **kwargs: Any) -> None: ...
    def set(self, *args: Any, **kwargs: Any) -> None: ...


def _create(definition: Definition) -> Any:
    from ray.serve import metrics

    if definition.kind == "counter":
        return metrics.Counter(definition.name, definition.description, tag_keys=definition.tags)
    if definition.kind == "gauge":
        return metrics.Gauge(definition.name, definition.description, tag_keys=definition.tags)
    return metrics.Histogram(
        definition.name,
        definition.description,
        boundaries=list(definition.boundaries),
        tag_keys=definition.tags,
    )


def _metric(definition: Definition) -> Any:
    """The process's object for `definition`, created on first use (in a replica, so Ray adds the
    Serve tags); a failed creation is tried once, then recording into it is a no-op."""
    found = _objects.get(definition.name)
    if found is None:
        try:
            found = _create(definition)
        except Exception as exc:
            _failed(definition.name, exc)
            found = _Unavailable()
        _objects[definition.name] = found
    return found


def _failed(what: str, exc: Exception) -> None:
    if what not in _warned:  # once per metric and process: a broken exporter must not flood the log
        _warned.add(what)
        log.warning("metric %s not recorded: %s: %s", what, type(exc).__name__, exc)


def _inc(definition: Definition, tags: dict[str, str], value: float = 1.0) -> None:
    try:
        _metric(definition).inc(value, tags=tags)
    except Exception as exc:
        _failed(definition.name, exc)


def _observe(definition: Definition, value: float, tags: dict[str, str]) -> None:
    try:
        _metric(definition).observe(value, tags=tags)
    except Exception as exc:
        _failed(definition.name, exc)


def _set(definition: Definition, value: float, tags: dict[str, str]) -> None:
    try:
        _metric(definition).set(value, tags=tags)
    except Exception as exc:
        _failed(definition.name, exc)


# ---------------------------------------------------------------------------- recording


def request_done(endpoint: str, variant: str | None, status: int | str, seconds: float) -> None:
    variant = variant or NO_VARIANT
    _inc(REQUESTS, {"endpoint": endpoint, "variant": variant, "status": str(status)})
    _observe(REQUEST_LATENCY, seconds, {"endpoint": endpoint, "variant": variant})


def stage_done(variant: str | None, stage: str, seconds: float) -> None:
    _observe(STAGE_LATENCY, seconds, {"variant": variant or NO_VARIANT, "stage": stage})


@contextmanager
def stage(variant: str | None, name: str) -> Iterator[None]:
    """Time a block as one stage; the block's own errors pass through (and are still timed)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        stage_done(variant, name, time.perf_counter() - started)


def prediction(variant: str, risk: float, band: str) -> None:
    _observe(RISK, float(risk), {"variant": variant})
    _inc(PREDICTIONS, {"variant": variant, "band": band})


def shadow(variant: str, shadow_variant: str, risk: float, shadow_risk: float, same_band: bool) -> None:
    tags = {"variant": variant, "shadow_variant": shadow_variant}
    _inc(SHADOW_SCORES, tags)
    _observe(SHADOW_DIFFERENCE, abs(float(risk) - float(shadow_risk)), tags)
    if not same_band:
        _inc(SHADOW_BAND_DISAGREEMENTS, tags)


def shadow_dropped(reason: str, n: int = 1) -> None:
    """`reason`: overload or error."""
    if n > 0:
        _inc(SHADOW_DROPPED, {"reason": reason}, n)


def auth_refused(endpoint: str, status: int, where: str) -> None:
    _inc(AUTH_REFUSED, {"endpoint": endpoint, "status": str(status), "where": where})


def audit_failed() -> None:
    _inc(AUDIT_FAILED, {})


def feedback(variant: str | None, outcome: bool) -> None:
    _inc(FEEDBACK, {"variant": variant or NO_VARIANT, "outcome": "1" if outcome else "0"})


def model_load(model: str, version: str, seconds: float, ok: bool) -> None:
    _inc(MODEL_LOADS, {"model": model, "version": str(version), "status": "ok" if ok else "error"})
    if ok:
        _observe(MODEL_LOAD_SECONDS, seconds, {"model": model})


def drift_share(variant: str, share: float) -> None:
    _set(DRIFT_SHARE, float(share), {"variant": variant})


def last_decision(decision_id: int, outcome: str, created_at: datetime | None) -> None:
    """The newest decision: its outcome at 1 (the other known outcomes at 0), id and time."""
    for name in sorted({*OUTCOMES, outcome}):
        _set(DECISION_OUTCOME, 1.0 if name == outcome else 0.0, {"outcome": name})
    _set(DECISION_ID, float(decision_id), {})
    if created_at is not None:
        _set(DECISION_TIME, created_at.timestamp(), {})
