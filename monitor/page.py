"""`GET /dashboard`: the champion-versus-challenger page, its own small Ray Serve application.

    GET /dashboard                      the page (query: as_of, since; ISO times, default now / all)
    GET /dashboard/report.json          the report the page shows, as `monitor report --json`
    GET /dashboard/drift/{event_id}     the Evidently HTML report a drift check recorded
    GET /dashboard/healthz              200 when the store answers

It reads the prediction store and the running service's weights (GET /variants) as
`python -m monitor report` does, and renders with monitor/html.py and monitor/svg.py. serve/
never imports this module: monitoring depends on serving, not the other way round.

(No `from __future__ import annotations` here: FastAPI must see the endpoint annotations as real
types through Serve's ingress wrapper.)
"""

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from ray import serve

from serve.auth import AuthGate, GateContext, read_only_policy

log = logging.getLogger("ray.serve")
CACHE_S = 5.0  # a page a few seconds old is fine; recomputing bootstraps on every refresh is not
HISTORY = 20


class PageArgs(BaseModel):
    """`build_app` arguments (the `args:` of the dashboard application in serve/config.yaml)."""

    store_url: str | None = Field(
        None, description="Default MEDISCALE_STORE_URL, else SQLite in the data dir."
    )
    service_url: str | None = Field(
        None,
        description="The service whose weights to read; default MEDISCALE_SERVICE_URL or localhost:8000. "
        "'' reads serve/config.yaml instead.",
    )
    champion: str = "champion"
    challenger: str = "challenger"
    n_boot: int = Field(
        200, ge=0, le=5000, description="Bootstrap samples (AUPRC, ECE), as `monitor report`."
    )


# ------------------------------------------------------------------ what the page shows (no HTTP)


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO time from the query string, in UTC (naive means UTC, as the CLI reads it)."""
    if value in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not an ISO date or time (e.g. 2026-12-31T00:00)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def drift_rows(found: list) -> list[dict]:
    """The newest drift check per variant, reduced to what the page shows. Only named fields
    leave the payload (a check could record anything; the page is aggregates only)."""
    rows, seen = [], set()
    for event in found:  # newest first
        if event.variant in seen:
            continue
        seen.add(event.variant)
        payload = event.payload or {}
        columns = payload.get("drifted_columns") or payload.get("drifted") or []
        if isinstance(columns, dict):
            columns = [name for name, drifted in columns.items() if drifted]
        columns = [c.get("column", c.get("name")) if isinstance(c, dict) else c for c in columns]
        rows.append(
            {
                "id": event.id,
                "variant": event.variant,
                "versions": event.model_versions,
                "drift_share": event.drift_share,
                "drifted_columns": [str(c) for c in columns if c is not None],
                "created_at": event.created_at.isoformat(timespec="seconds"),
                "has_report": report_path(payload) is not None,
                "mlflow_run_id": payload.get("mlflow_run_id") or payload.get("run_id"),
                "columns_checked": _int(payload.get("columns_checked")),
                "max_drift_share": _float(payload.get("max_drift_share")),
                "n_current": _int(payload.get("n_current")),
                "n_reference": _int(payload.get("n_reference")),
                "risk_drifted": (payload.get("risk_drift") or {}).get("drifted")
                if isinstance(payload.get("risk_drift"), dict)
                else None,
            }
        )
    return rows


# `monitor drift` records `html`; the others are accepted so a renamed key still links.
REPORT_KEYS = ("html", "report_path", "html_path", "html_report", "report_html", "report")


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def report_path(payload: dict) -> str | None:
    """The HTML report path a drift check recorded (the first of the known payload keys)."""
    for key in REPORT_KEYS:
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, dict) and isinstance(value.get("path"), str):
            return value["path"]
    return None


def gather(store, routing, args: PageArgs, as_of: datetime | None, since: datetime | None) -> dict:
    """Everything the page needs from the store: the report, the decision history and the
    newest drift checks. A store with nothing to compare yet is an answer, not an error."""
    from monitor.decide import history, read_rule
    from monitor.experiment import MonitorError
    from monitor.report import report
    from serve.control import events

    problem = None
    as_of = as_of or datetime.now(UTC)
    try:
        result = report(
            store,
            routing,
            as_of=as_of,
            since=since,
            champion=args.champion,
            challenger=args.challenger,
            maturity_days=read_rule().maturity_days,
            n_boot=args.n_boot,
        )
    except MonitorError as err:  # one variant only, or both serve the same models
        problem = str(err)
        result = {
            "as_of": as_of.isoformat(),
            "since": since.isoformat() if since else None,
            "weights_from": routing.source,
            "empty": True,
            "message": problem,
        }
    return {
        "report": result,
        "decisions": history(store, HISTORY),
        "drift": drift_rows(events(store, kind="drift", limit=200)),
        "problem": problem,
    }


def drift_file(store, event_id: int) -> tuple[str | None, Path | None]:
    """(recorded path, existing file) for a drift event. Only a path recorded in the store is
    ever opened; nothing from the URL but the event's integer id is used."""
    import sqlalchemy as sa

    from serve.control import ensure_tables, monitor_events

    ensure_tables(store)
    stmt = sa.select(monitor_events.c.kind, monitor_events.c.payload).where(monitor_events.c.id == event_id)
    with store.engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None or row.kind != "drift":
        raise LookupError(f"no drift check #{event_id}")
    recorded = report_path(row.payload or {})
    if recorded is None:
        return None, None
    path = Path(recorded)
    return recorded, path if path.is_file() else None


# ------------------------------------------------------------------ the HTTP app

api = FastAPI(title="MediScale monitoring page", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """No stack trace (or store contents) to the browser."""
    log.error("dashboard: unhandled %s on %s", type(exc).__name__, request.url.path)
    return JSONResponse(status_code=500, content={"detail": "internal error; see the server log"})


class _Index:
    """`/dashboard` (no slash) is the page itself, not a 307 to `/dashboard/`: a route cannot
    be "" under Serve's ingress, so the empty path becomes "/" before routing."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            path, root = scope.get("path", ""), scope.get("root_path", "")
            if path in ("", root):
                scope = {**scope, "path": path + "/", "raw_path": (path + "/").encode()}
        await self.app(scope, receive, send)


# This replica's auth context (set when its Dashboard starts): every page needs role `read`.
_gate: list = []
api.add_middleware(AuthGate, context=lambda: _gate[0] if _gate else None, rules=read_only_policy)
api.add_middleware(_Index)


@serve.deployment(max_ongoing_requests=8, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Dashboard:
    """Computes on request, caches each (as_of, since) answer for a few seconds."""

    def __init__(self, args: dict | None = None) -> None:
        from data.config import Settings
        from serve.store import PredictionStore

        self.args = PageArgs.model_validate(args or {})
        settings = Settings.from_env()
        self.service_url = settings.service_url if self.args.service_url is None else self.args.service_url
        self.store = PredictionStore(self.args.store_url)
        _gate[:] = [self._gate_context(settings)]
        self._cache: dict[tuple, tuple[float, dict]] = {}

    def _gate_context(self, settings) -> GateContext:
        """Keys from the key file or this store's `api_keys`; audit rows into this store."""
        from serve.audit import AuditLog
        from serve.keys import Keyring, open_source

        keyring = Keyring(open_source(settings, self.store))
        return GateContext(keyring=keyring, audit=AuditLog(self.store))

    def _gather(self, as_of: datetime | None, since: datetime | None) -> dict:
        from monitor.service import routing

        key = (as_of, since)
        hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        found = gather(self.store, routing(self.service_url), self.args, as_of, since)
        self._cache = {k: v for k, v in self._cache.items() if time.monotonic() - v[0] < CACHE_S}
        self._cache[key] = (time.monotonic(), found)
        return found

    async def _found(self, as_of: str | None, since: str | None) -> dict:
        try:
            moments = parse_time(as_of, "as_of"), parse_time(since, "since")
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        return await asyncio.to_thread(self._gather, *moments)

    @api.get("/", response_class=HTMLResponse)
    async def page(
        self, request: Request, as_of: str | None = None, since: str | None = None
    ) -> HTMLResponse:
        from monitor import html

        found = await self._found(as_of, since)
        base = request.scope.get("root_path", "").rstrip("/")
        body = html.page(
            found["report"],
            found["decisions"],
            found["drift"],
            generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
            base=base,
            problem=found["problem"],
        )
        return HTMLResponse(body, headers={"cache-control": "no-store"})

    @api.get("/report.json")
    async def report_json(self, as_of: str | None = None, since: str | None = None) -> JSONResponse:
        from serve.control import dumps

        found = await self._found(as_of, since)
        return JSONResponse(dumps(found["report"]))

    @api.get("/drift/{event_id}")
    async def drift(self, event_id: int):
        from monitor import html

        try:
            recorded, path = await asyncio.to_thread(drift_file, self.store, event_id)
        except LookupError:
            return HTMLResponse(html.drift_missing(event_id, None, exists=False), status_code=404)
        if path is None:
            return HTMLResponse(html.drift_missing(event_id, recorded), status_code=404)
        return FileResponse(path, media_type="text/html", headers={"cache-control": "no-store"})

    @api.get("/healthz")
    async def healthz(self) -> dict:
        import sqlalchemy as sa

        def ping() -> None:
            with self.store.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))

        await asyncio.to_thread(ping)
        return {"ok": True}


def build_app(args: dict | None = None) -> serve.Application:
    """The page application; `args` are PageArgs (serve/config.yaml's `args:`)."""
    return Dashboard.bind(PageArgs.model_validate(args or {}).model_dump())
