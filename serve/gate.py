"""The auth gate in Ray Serve's HTTP proxy, so a refused request never reaches a replica.

Ray calls `proxy_middlewares()` once in each proxy process when the cluster runs with
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.gate:proxy_middlewares` (set by `make run` and
the KubeRay manifests). The gate there refuses missing or unknown keys (401) and wrong roles (403,
audited as `where=proxy`); the replicas check again, rate-limit and audit the calls they answer.
Keys come from the settings (`MEDISCALE_API_KEYS_FILE`, else the store database's table), which
must name the same key store as the applications'.
"""

from __future__ import annotations

from starlette.middleware import Middleware

from serve.auth import AuthGate, GateContext

_context: list[GateContext] = []


def _proxy_context() -> GateContext:
    """Built on the first request (not at proxy start: the store may not be up yet)."""
    if not _context:
        from data.config import Settings
        from serve.audit import AuditLog
        from serve.keys import Keyring, open_source
        from serve.store import PredictionStore

        settings = Settings.from_env()
        store = PredictionStore(settings.resolved_store_url())  # one engine for keys and audit
        keyring = Keyring(open_source(settings, store))
        _context.append(GateContext(keyring=keyring, audit=AuditLog(store)))
    return _context[0]


def _safe_context() -> GateContext | None:
    try:
        return _proxy_context()
    except Exception:  # the key store is not reachable yet: 503 "starting", retried next request
        return None


def proxy_middlewares() -> list[Middleware]:
    return [Middleware(AuthGate, context=_safe_context, where="proxy")]
