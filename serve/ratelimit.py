"""Per-key rate limits that hold across replicas: one token bucket per key, in one named actor.

Every Router replica asks the same detached actor (`mediscale-rate-limiter`), so a key's limit is
the service's, not a replica's. A bucket holds up to `burst` requests and refills at the key's
`rate_per_minute`; a request finding it empty is told how long until a token is back (the 429's
`Retry-After`). If the actor cannot be reached the request is let through and counted in the
log: a broken limiter must not take the service down with it (the limit is a fairness guard, the
key check is the security boundary).
"""

from __future__ import annotations

import asyncio
import logging
import time

from serve.keys import ApiKey

log = logging.getLogger("ray.serve")

ACTOR_NAME = "mediscale-rate-limiter"
NAMESPACE = "mediscale"
TAKE_TIMEOUT_S = 2.0


class TokenBuckets:
    """The buckets themselves (plain Python: the actor wraps it; tests use it directly)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    @staticmethod
    def burst(rate_per_minute: int) -> float:
        return max(1.0, rate_per_minute / 6.0)  # ten seconds' worth

    def take(self, key: str, rate_per_minute: int, now: float | None = None) -> float:
        """0 when the request may go, else the seconds until one may."""
        now = time.monotonic() if now is None else now
        per_second = rate_per_minute / 60.0
        burst = self.burst(rate_per_minute)
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * per_second)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / per_second


def _actor_class():
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1)(TokenBuckets)


class LimiterClient:
    """A replica's handle on the shared actor (created by whichever replica asks first)."""

    def __init__(self, default_rate_per_minute: int):
        self.default_rate = default_rate_per_minute
        self._actor = None

    def _get_actor(self):
        if self._actor is None:
            self._actor = (
                _actor_class()
                .options(name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True)
                .remote()
            )
        return self._actor

    async def take(self, key: ApiKey) -> float:
        rate = key.rate_per_minute or self.default_rate
        try:
            ref = self._get_actor().take.remote(key.sha256[:16], rate)
            return float(await asyncio.wait_for(ref, TAKE_TIMEOUT_S))
        except Exception as exc:  # let it through: see the module docstring
            self._actor = None
            log.warning("rate limiter unavailable (%s); request not limited", type(exc).__name__)
            return 0.0
