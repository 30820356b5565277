"""Who may call what: the endpoint policy and the ASGI gate that enforces it.

The same gate runs twice. In the Serve proxy (`serve/gate.py`, through Ray's
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`) it refuses a request without a valid key (401) or
with the wrong role (403) before the request reaches any replica. In each replica (the Router's
and the dashboard's FastAPI apps) it checks again, so an app served without the proxy callback is
still closed, applies the per-key rate limit (429, shared by all replicas) and writes the audit
row of every authenticated call.

Keys travel as `Authorization: Bearer <key>`, `X-API-Key: <key>`, or as the password of HTTP
Basic auth (what a browser sends to `/dashboard` after its login prompt). `admin` may call
everything; `/healthz` and the API's own description (`/docs`, `/openapi.json`) are open.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serve import metrics
from serve.audit import AccessEntry, AuditLog
from serve.keys import ApiKey, Keyring, KeyStoreUnavailable

log = logging.getLogger("ray.serve")

OPEN: frozenset[str] = frozenset()
ANY_ROLE = frozenset({"predict", "feedback", "read", "admin"})
KEY_STATE = "mediscale_key"  # scope["state"]: the caller's key record, for handlers
REQUEST_ID_STATE = "mediscale_request_id"  # scope["state"]: the id the handler used, for the audit

# (path test, endpoint label, roles). First match wins; `admin` is always allowed.
_OPEN_SUFFIXES = ("/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")


@dataclass(frozen=True)
class Rule:
    endpoint: str
    roles: frozenset[str]  # OPEN: no key needed


def policy(method: str, path: str) -> Rule:
    """The endpoint label and the roles that may call it, from the path under any route prefix."""
    path = path.rstrip("/") or "/"
    if path.endswith(_OPEN_SUFFIXES):
        return Rule("healthz" if path.endswith("/healthz") else "docs", OPEN)
    if "/predictions/" in path:  # GET /predictions/{request_id}
        return Rule("predictions", frozenset({"read"}))
    if "/feedback/" in path:  # PUT /feedback/{request_id}: a correction
        return Rule("feedback_correction", frozenset({"admin"}))
    if path.endswith("/predict/batch"):
        return Rule("predict_batch", frozenset({"predict"}))
    if path.endswith("/predict"):
        return Rule("predict", frozenset({"predict"}))
    if path.endswith("/feedback"):
        return Rule("feedback", frozenset({"feedback"}))
    if path.endswith("/variants"):
        return Rule("variants", frozenset({"read"}))
    if path.endswith("/metrics"):
        return Rule("metrics", frozenset({"read"}))
    if path == "/dashboard" or path.startswith("/dashboard/"):
        return Rule("dashboard", frozenset({"read"}))
    return Rule("other", ANY_ROLE)  # unknown paths: any valid key (deny by default)


def read_only_policy(method: str, path: str) -> Rule:
    """The dashboard app's policy: everything it serves needs `read`, except its health check."""
    if path.rstrip("/").endswith("/healthz"):
        return Rule("healthz", OPEN)
    return Rule("dashboard", frozenset({"read"}))


def allowed(role: str, roles: frozenset[str]) -> bool:
    return role == "admin" or role in roles


def credentials(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The presented key, from Bearer, X-API-Key or Basic (the password), else None."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        found.setdefault(name.lower(), value)
    api_key = found.get(b"x-api-key")
    if api_key:
        return api_key.decode("latin-1").strip() or None
    header = found.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


@dataclass
class GateContext:
    """What a gate needs: the keys, and (in replicas) the audit log and the rate limiter."""

    keyring: Keyring
    audit: AuditLog | None = None
    limiter: Any = None  # serve.ratelimit.LimiterClient


async def _answer(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


REPLICA_LOST = (
    "the replica answering this request stopped; retry with the same x-request-id (a 409 then "
    "means it was stored: GET /predictions/{request_id} returns it)"
)


class _ReplicaLost:
    """A plain-text 500 passing through the proxy's middleware becomes a JSON 503 that says the
    request is safe to retry; the apps' 500s are JSON and pass unchanged. (The gate also answers
    503 when the proxy's call raises before any response, or returns without one: that is how
    Serve's proxy ends a call whose Router replica was killed mid-request.)"""

    def __init__(self, send):
        self.send = send
        self.rewriting = False
        self.started = False  # a response began: an exception now cannot become a 503

    async def __call__(self, message):
        if message["type"] == "http.response.start":
            self.started = True
        if message["type"] == "http.response.start" and message["status"] == 500:
            headers = dict((k.lower(), v) for k, v in message.get("headers") or [])
            if not headers.get(b"content-type", b"").startswith(b"application/json"):
                self.rewriting = True
                return
        if self.rewriting and message["type"] == "http.response.body":
            if message.get("more_body"):
                return  # drop the proxy's text; the JSON goes out with the last part
            self.rewriting = False
            return await _answer(self.send, 503, REPLICA_LOST, {"Retry-After": "1"})
        await self.send(message)


class AuthGate:
    """Pure ASGI middleware: authenticate, authorize, rate-limit, then audit what was answered.

    `context` returns the GateContext, or None while the replica is still starting (503).
    """

    def __init__(
        self,
        app,
        context: Callable[[], GateContext | None],
        where: str = "replica",
        rules: Callable[[str, str], Rule] = policy,
    ):
        self.app = app
        self.context = context
        self.where = where
        self.rules = rules

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method = scope.get("method", "GET")
        rule = self.rules(method, scope.get("path", ""))
        if not rule.roles:
            return await self.app(scope, receive, send)
        ctx = self.context()
        if ctx is None:
            return await _answer(send, 503, "service starting: retry shortly", {"Retry-After": "2"})
        try:
            key = await self._find(ctx.keyring, credentials(scope.get("headers") or []))
        except KeyStoreUnavailable as exc:
            return await _answer(send, 503, f"{exc}; nothing was done, it is safe to retry")
        if key is None:
            metrics.auth_refused(rule.endpoint, 401, self.where)
            challenge = (
                'Basic realm="MediScale"' if rule.endpoint == "dashboard" else 'Bearer realm="MediScale"'
            )
            return await _answer(
                send,
                401,
                "a valid API key is required: send 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": challenge},
            )
        if not allowed(key.role, rule.roles):
            metrics.auth_refused(rule.endpoint, 403, self.where)
            await _answer(
                send,
                403,
                f"key {key.name!r} has role {key.role!r}; {rule.endpoint} needs "
                f"{' or '.join(sorted(rule.roles | {'admin'}))}",
            )
            return await self._audit(ctx, key, method, rule, scope, 403)
        if ctx.limiter is not None:
            wait = await ctx.limiter.take(key)
            if wait > 0:
                metrics.auth_refused(rule.endpoint, 429, self.where)
                retry = str(max(1, math.ceil(wait)))
                await _answer(
                    send,
                    429,
                    f"rate limit of key {key.name!r} reached; retry after {retry} s",
                    {"Retry-After": retry},
                )
                return await self._audit(ctx, key, method, rule, scope, 429)
        scope.setdefault("state", {})[KEY_STATE] = key
        status = 500  # an exception escaping the app is a 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if self.where == "proxy":  # the replica audits what it answers
            lost = _ReplicaLost(send)
            try:
                await self.app(scope, receive, lost)
            except Exception as exc:  # a replica died under the request: uvicorn would send a bare 500
                if lost.started:
                    raise
                log.warning("request lost with its replica (%s); answered 503", type(exc).__name__)
                return await _answer(send, 503, REPLICA_LOST, {"Retry-After": "1"})
            if not lost.started:
                # Serve's proxy answers nothing when the replica died mid-call (its 500 sends no
                # message, ray/serve/_private/http_util.py), and uvicorn would then send a bare 500.
                log.warning("request lost with its replica; answered 503")
                await _answer(send, 503, REPLICA_LOST, {"Retry-After": "1"})
            return
        try:
            await self.app(scope, receive, send_status)
        finally:
            await self._audit(ctx, key, method, rule, scope, status)

    @staticmethod
    async def _find(keyring: Keyring, secret: str | None) -> ApiKey | None:
        if keyring.fresh:
            return keyring.find(secret)
        return await asyncio.to_thread(keyring.find, secret)  # a store read: off the event loop

    async def _audit(
        self, ctx: GateContext, key: ApiKey, method: str, rule: Rule, scope, status: int
    ) -> None:
        if ctx.audit is None:
            return
        state = scope.get("state") or {}
        request_id = state.get(REQUEST_ID_STATE)
        entry = AccessEntry(key.name, key.role, method[:8], rule.endpoint, request_id, status, self.where)
        try:
            await ctx.audit.record(entry)
        except Exception as exc:  # the answer is already sent; count the gap, never log the call
            metrics.audit_failed()
            log.warning("audit row not written (%s)", type(exc).__name__)
