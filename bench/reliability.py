"""Reliability of a RUNNING service: replica kills, a prediction-store outage, and a soak.

A load test says how fast the service is when nothing goes wrong; this says what a client sees
when something does, and whether the prediction log stays true to the answers given (a clinical
audit trail: a 200 must mean one stored row, and a refused request must leave none).

- `kill`: a closed-loop client (`--concurrency`, default 4) for `--kill-seconds`; meanwhile one
  replica of each deployment of the `mediscale` app (TabularScorer, NoteScorer, Router,
  in that order) is SIGKILLed, at evenly spaced times. Each request has its own x-request-id; on a
  5xx, a timeout or a connection error it is retried with the SAME id (exponential backoff), and a
  409 on a retry means an earlier attempt committed: the stored answer is read back with
  GET /predictions/{id} and counted as a success. `recovery_s` per kill: from the kill to the 3rd
  of the first 3 consecutive successful attempts sent after it. A kill waits for the previous one
  to recover (else their outages would blur together), and the load runs on until the last kill
  recovers (at most `--recovery-timeout` past `--kill-seconds`). Afterwards every id is read back
  through the API (works with any store backend): `lost_rows` = successes without a row,
  `orphan_rows` = failed requests with a row, `mismatched_rows` = stored risk != answered risk.
  The store's unique index on request_id means "a row" is "exactly one row".
- `outage`: the same client without retries for `--outage-seconds`; in the middle the store is
  made unavailable for `--outage-hold` s: SQLite (the default store) by holding an exclusive lock
  from this process (`BEGIN EXCLUSIVE` on the same file), PostgreSQL with `--stop-cmd` /
  `--start-cmd`. Reports status codes (200 and 503 expected, never 500), whether the 503s name the
  store, `partial_rows` (503 answered but a row stored: should be 0), `resumed_s` (release to the
  first 200) and whether any replica restarted.
- `soak`: an open-loop client at `--soak-rate` requests/s for `--soak-minutes`; the RSS of every
  replica process of the app is sampled every 15 s; `rss_growth_pct` = max over replicas of
  (median RSS of the last minute / median RSS of the first minute after a 1-minute warm-up - 1).

Replicas are found through Ray's state API (the dashboard of `make serve`'s local cluster,
http://127.0.0.1:8265, with RAY_AUTH_MODE=token as in the README), and killed or measured only
when the Router pid the service itself reports (GET /variants) is one of them: the state API and
the URL must be the same service on this machine. The client refuses a non-loopback --url unless
--allow-remote. Nothing patient-like (ids, notes) is printed or saved: counts only. Run alone:

    python bench/reliability.py --json bench/results/reliability.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from common import emit  # noqa: E402
from serve_load import Payloads  # noqa: E402  (the load test's varied records: one definition)

log = logging.getLogger("bench.reliability")

APP = "mediscale"
DEPLOYMENTS = ("TabularScorer", "NoteScorer", "Router")  # the kill order
SCENARIOS = ("kill", "outage", "soak")
RECOVERY_RUN = 3  # consecutive successful attempts that count as recovered
RSS_EVERY_S = 15.0
WARMUP_S = 60.0  # soak: RSS before this is start-up, not growth


# --------------------------------------------------------------------------- client


@dataclass
class Attempt:
    """One HTTP attempt; times in seconds from the scenario's start."""

    sent: float
    done: float
    status: int | None  # None: no HTTP answer (timeout, connection refused or reset)
    error: str | None = None  # exception type, or the answer's detail (ids redacted)

    @property
    def ok(self) -> bool:
        """The service answered correctly (a 409 on a retry is the committed first attempt)."""
        return self.status in (200, 409)


@dataclass
class Outcome:
    """One logical request (one x-request-id) after its retries."""

    rid: str
    result: str  # ok, ok_409_read, failed, failed_409_unread, conflict_first_attempt
    attempts: list[Attempt] = field(default_factory=list)
    risk: float | None = None  # the answered (or read-back) risk

    @property
    def success(self) -> bool:
        return self.result in ("ok", "ok_409_read")


def _detail(response: Any, rid: str) -> str:
    """An error answer's detail, short, with this request's id taken out (counts are kept by it)."""
    try:
        body = response.json()
        text = str(body.get("detail", body)) if isinstance(body, dict) else str(body)
    except ValueError:
        text = response.text
    return text.replace(rid, "<id>")[:160]


class Client:
    """httpx against the service; every attempt is logged with its time and status."""

    def __init__(self, url: str, key: str | None, concurrency: int, timeout_s: float):
        import httpx

        self.httpx = httpx
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4),
        )
        self.run = uuid.uuid4().hex[:10]
        self.count = 0
        self.t0 = time.monotonic()
        self.attempts: list[Attempt] = []
        self.details: Counter[str] = Counter()  # "status: detail" of error answers

    def now(self) -> float:
        return time.monotonic() - self.t0

    def new_id(self, tag: str) -> str:
        self.count += 1
        return f"relia-{self.run}-{tag}-{self.count:06d}"

    async def post(self, rid: str, body: dict) -> tuple[Attempt, float | None]:
        sent = self.now()
        try:
            r = await self.http.post("/predict", json=body, headers={"x-request-id": rid})
        except self.httpx.HTTPError as exc:
            attempt = Attempt(sent, self.now(), None, type(exc).__name__)
            self.details[f"no answer: {type(exc).__name__}"] += 1
            self.attempts.append(attempt)
            return attempt, None
        risk, error = None, None
        if r.status_code == 200:
            risk = float(r.json()["risk"])
        else:
            error = _detail(r, rid)
            self.details[f"{r.status_code}: {error}"] += 1
        attempt = Attempt(sent, self.now(), r.status_code, error)
        self.attempts.append(attempt)
        return attempt, risk

    async def stored(self, rid: str, tries: int = 6) -> tuple[str, float | None]:
        """('row', risk) / ('none', None) / ('unknown', None) from GET /predictions/{id}."""
        for k in range(tries):
            try:
                r = await self.http.get(f"/predictions/{rid}")
                if r.status_code == 200:
                    return "row", float(r.json()["risk"])
                if r.status_code == 404:
                    return "none", None
            except self.httpx.HTTPError:
                pass
            await asyncio.sleep(min(0.5 * 2**k, 5.0))
        return "unknown", None

    async def get_status(self, path: str) -> int | None:
        return (await self.get_with_reason(path))[0]

    async def get_with_reason(self, path: str) -> tuple[int | None, str | None]:
        """Status and, for an error, the body's `reason` or `detail` (a health probe's why)."""
        try:
            r = await self.http.get(path)
        except self.httpx.HTTPError as exc:
            return None, type(exc).__name__
        if r.status_code < 400:
            return r.status_code, None
        try:
            body = r.json()
            return r.status_code, str(body.get("reason") or body.get("detail"))[:160]
        except (ValueError, AttributeError):
            return r.status_code, r.text[:160]

    async def close(self) -> None:
        await self.http.aclose()


async def request(client: Client, payloads: Payloads, retries: int, tag: str) -> Outcome:
    """One prediction, retried idempotently by its request id on 5xx / no answer."""
    rid = client.new_id(tag)
    body = payloads.next()
    out = Outcome(rid, "failed")
    for k in range(retries + 1):
        attempt, risk = await client.post(rid, body)
        out.attempts.append(attempt)
        if attempt.status == 200:
            out.result, out.risk = "ok", risk
            return out
        if attempt.status == 409:
            if k == 0:  # a fresh id already stored: not this run's doing
                out.result = "conflict_first_attempt"
                return out
            found, stored_risk = await client.stored(rid)
            out.result = "ok_409_read" if found == "row" else "failed_409_unread"
            out.risk = stored_risk
            return out
        if attempt.status is not None and attempt.status < 500:
            return out  # a 4xx other than 409: not retry-safe, not transient
        if k < retries:
            await asyncio.sleep(min(0.5 * 2**k, 5.0))
    return out


async def closed_loop(client, payloads, concurrency, retries, tag, stop: asyncio.Event) -> list[Outcome]:
    """`concurrency` clients, each sending its next request when the previous one is done."""
    outcomes: list[Outcome] = []

    async def worker() -> None:
        while not stop.is_set():
            outcomes.append(await request(client, payloads, retries, tag))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


async def verify_rows(client: Client, outcomes: list[Outcome], concurrency: int) -> dict[str, Any]:
    """Read every id back through the API: which have a row, and does it hold the answered risk."""
    found: dict[str, tuple[str, float | None]] = {}
    queue = list(outcomes)

    async def worker() -> None:
        while queue:
            o = queue.pop()
            found[o.rid] = await client.stored(o.rid)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    lost = sum(1 for o in outcomes if o.success and found[o.rid][0] == "none")
    orphan = sum(1 for o in outcomes if not o.success and found[o.rid][0] == "row")
    mismatched = sum(
        1
        for o in outcomes
        if o.success and found[o.rid][0] == "row" and abs((found[o.rid][1] or 0) - (o.risk or 0)) > 1e-9
    )
    unverified = sum(1 for o in outcomes if found[o.rid][0] == "unknown")
    return {
        "checked": len(outcomes),
        "lost_rows": lost,
        "orphan_rows": orphan,
        "mismatched_rows": mismatched,
        "unverified": unverified,
        "verify_s": round(time.monotonic() - started, 1),
        "_found": found,
    }


# --------------------------------------------------------------------------- replicas


class Replicas:
    """The app's replica actors via Ray's state API, trusted only if the service's own Router pid
    (GET /variants) is among them: then they are this service's, on this machine."""

    def __init__(self, address: str):
        self.address = address
        self.verified = False
        self.reason = "not checked"

    def list(self) -> list[dict[str, Any]]:
        from ray.util.state import list_actors

        actors = list_actors(
            address=self.address,
            filters=[("state", "=", "ALIVE")],
            limit=10_000,
            raise_on_missing_output=False,
        )
        prefix = f"ServeReplica:{APP}:"
        return [
            {"deployment": a.class_name[len(prefix) :], "actor_id": a.actor_id, "pid": a.pid}
            for a in actors
            if a.class_name.startswith(prefix)
        ]

    def verify(self, router_pid: int | None) -> None:
        try:
            replicas = self.list()
        except Exception as exc:  # no cluster, wrong address, auth
            self.reason = f"state API not reachable at {self.address} ({type(exc).__name__})"
            return
        routers = {r["pid"] for r in replicas if r["deployment"] == "Router"}
        if router_pid is None or router_pid not in routers:
            self.reason = "the service's Router pid is not a replica of the cluster this script sees"
            return
        if not all(_is_replica_process(r["pid"]) for r in replicas):
            self.reason = "replica pids are not processes of this machine"
            return
        self.verified, self.reason = True, "ok"

    def counts(self) -> dict[str, int]:
        return dict(Counter(r["deployment"] for r in self.list()))


def _is_replica_process(pid: int | None) -> bool:
    """A local process whose title is a Serve replica of this app (guards the SIGKILL)."""
    import psutil

    if not pid:
        return False
    try:
        return f"ServeReplica:{APP}:" in " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def kill_one(replicas: Replicas, deployment: str) -> dict[str, Any]:
    """SIGKILL one local replica process of `deployment`; returns what was done."""
    try:
        targets = [r for r in replicas.list() if r["deployment"] == deployment]
    except Exception as exc:
        return {"deployment": deployment, "killed": False, "reason": f"state API: {type(exc).__name__}"}
    targets = [r for r in targets if _is_replica_process(r["pid"])]
    if not targets:
        return {"deployment": deployment, "killed": False, "reason": "no live local replica"}
    os.kill(targets[0]["pid"], signal.SIGKILL)
    return {"deployment": deployment, "killed": True, "replicas_alive_before": len(targets)}


# --------------------------------------------------------------------------- helpers


def recovered_at(attempts: list[Attempt], since: float) -> float | None:
    """Completion time of the RECOVERY_RUN-th of the first run of consecutive successful attempts
    sent after `since` (in completion order), or None."""
    run = 0
    for a in sorted((a for a in attempts if a.sent >= since), key=lambda a: a.done):
        run = run + 1 if a.ok else 0
        if run == RECOVERY_RUN:
            return a.done
    return None


def statuses(attempts: list[Attempt]) -> dict[str, int]:
    return dict(sorted(Counter(str(a.status) if a.status else "no_answer" for a in attempts).items()))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 1)


async def sleep_until(client: Client, t: float) -> None:
    await asyncio.sleep(max(0.0, t - client.now()))


async def wait_ready(client: Client, payloads: Payloads, timeout_s: float) -> float:
    """Until /healthz is 200 and RECOVERY_RUN predictions in a row succeed (the probes' rows are
    left in the store, marked `probe` in their ids); returns the seconds waited."""
    started, run = time.monotonic(), 0
    while run < RECOVERY_RUN:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"service not ready after {timeout_s:.0f} s")
        if await client.get_status("/healthz") != 200:
            run = 0
            await asyncio.sleep(2.0)
            continue
        attempt, _ = await client.post(client.new_id("probe"), payloads.next())
        run = run + 1 if attempt.status == 200 else 0
        if attempt.status != 200:
            await asyncio.sleep(2.0)
    return round(time.monotonic() - started, 1)


async def router_pid(client: Client) -> int | None:
    try:
        return int((await client.http.get("/variants")).json()["replica"]["pid"])
    except Exception:
        return None


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    results = Counter(o.result for o in outcomes)
    successes = sum(1 for o in outcomes if o.success)
    attempts = [a for o in outcomes for a in o.attempts]
    latencies = [(a.done - a.sent) * 1000 for a in attempts if a.status == 200]
    return {
        "requests": len(outcomes),
        "successes": successes,
        "success_rate": round(successes / len(outcomes), 4) if outcomes else None,
        "results": dict(results),
        "attempts": len(attempts),
        "requests_retried": sum(1 for o in outcomes if len(o.attempts) > 1),
        "attempt_status_codes": statuses(attempts),
        "latency_ms_200": {"p50": pct(latencies, 50), "p99": pct(latencies, 99), "max": pct(latencies, 100)},
    }


# --------------------------------------------------------------------------- scenarios


async def scenario_kill(args, client: Client, payloads: Payloads, replicas: Replicas) -> dict[str, Any]:
    """Replica kills under a retrying client; then the ids are read back."""
    if not replicas.verified:
        return {"skipped": f"replicas not killable: {replicas.reason}"}
    start = client.now()
    before = replicas.counts()
    stop = asyncio.Event()
    load = asyncio.create_task(closed_loop(client, payloads, args.concurrency, args.retries, "kill", stop))
    deadline = start + args.kill_seconds + args.recovery_timeout
    kills: list[dict[str, Any]] = []
    pending: float | None = None  # the last kill's time while it has not recovered

    async def wait_recovered(t_kill: float) -> float | None:
        while client.now() < deadline:
            t = recovered_at(client.attempts, t_kill)
            if t is not None:
                return t
            await asyncio.sleep(0.25)
        return None

    for i, deployment in enumerate(DEPLOYMENTS):
        planned = start + args.kill_seconds * (i + 1) / (len(DEPLOYMENTS) + 1)
        await sleep_until(client, planned)
        if pending is not None and await wait_recovered(pending) is None:
            kills.append({"deployment": deployment, "killed": False, "reason": "previous kill not recovered"})
            continue
        t_kill = client.now()
        record = await asyncio.to_thread(kill_one, replicas, deployment)
        record |= {"at_s": round(t_kill - start, 1), "delayed_s": round(max(0.0, t_kill - planned), 1)}
        log.info("kill %d/%d: %s at %.1f s", i + 1, len(DEPLOYMENTS), deployment, t_kill - start)
        kills.append(record | {"_t": t_kill})
        pending = t_kill if record["killed"] else None
    if pending is not None:
        await wait_recovered(pending)
    await sleep_until(client, start + args.kill_seconds)
    stop.set()
    outcomes = await load
    load_s = client.now() - start
    for k in kills:
        t_kill = k.pop("_t", None)
        if t_kill is None:
            continue
        t_rec = recovered_at(client.attempts, t_kill)
        k["recovery_s"] = None if t_rec is None else round(t_rec - t_kill, 2)
        window = [a for a in client.attempts if t_kill <= a.done <= (t_rec or client.now())]
        k["attempts_until_recovered"] = statuses(window)
        k["failed_attempts"] = sum(1 for a in window if not a.ok)  # 0: the kill did not show
    log.info("kill: %d requests; reading every id back", len(outcomes))
    rows = await verify_rows(client, outcomes, args.concurrency)
    rows.pop("_found")
    recoveries = [k["recovery_s"] for k in kills if k.get("killed")]
    report = summarize(outcomes) | {k: v for k, v in rows.items()}
    report |= {
        "kills": kills,
        "recovery_s": {k["deployment"]: k.get("recovery_s") for k in kills if k.get("killed")},
        "recovery_s_max": None if not recoveries or None in recoveries else max(recoveries),
        "not_recovered": sum(1 for r in recoveries if r is None),
        "status_500": sum(1 for o in outcomes for a in o.attempts if a.status == 500),
        "replicas_before": before,
        "load_s": round(load_s, 1),
    }
    try:
        report["replicas_after"] = await asyncio.to_thread(replicas.counts)
    except Exception as exc:
        report["replicas_after"] = f"state API: {type(exc).__name__}"
    return report


def sqlite_path(store_url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    url = make_url(store_url)
    return Path(url.database).resolve() if url.get_backend_name() == "sqlite" and url.database else None


def hold_store(args, store_url: str, hold_s: float, marks: dict[str, Any], now) -> None:
    """Make the store unavailable for `hold_s` seconds (runs in a thread)."""
    path = sqlite_path(store_url)
    if path is not None:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")  # in WAL mode: blocks writers, readers still read
            marks["held"] = now()
            time.sleep(hold_s)
            conn.rollback()
            marks["released"] = now()
        finally:
            conn.close()
        return
    subprocess.run(args.stop_cmd, shell=True, check=True, capture_output=True, timeout=120)
    marks["held"] = now()
    time.sleep(hold_s)
    subprocess.run(args.start_cmd, shell=True, check=True, capture_output=True, timeout=120)
    marks["released"] = now()


async def scenario_outage(args, client: Client, payloads: Payloads, replicas: Replicas) -> dict[str, Any]:
    """Store unavailable under load, no retries: 503s that name the store, no rows behind them."""
    store_url = args.store_url or default_store_url()
    is_sqlite = sqlite_path(store_url) is not None
    if is_sqlite and not sqlite_path(store_url).exists():
        return {"skipped": "the SQLite store file does not exist (is --store-url the service's store?)"}
    if not is_sqlite and not (args.stop_cmd and args.start_cmd):
        return {"skipped": "a PostgreSQL store needs --stop-cmd and --start-cmd"}
    ids_before = await asyncio.to_thread(_replica_ids, replicas)
    start = client.now()
    stop = asyncio.Event()
    load = asyncio.create_task(closed_loop(client, payloads, args.concurrency, 0, "outage", stop))
    marks: dict[str, Any] = {}
    health: list[tuple[float, int | None, str | None]] = []

    async def probe_health() -> None:
        while not stop.is_set():
            health.append((client.now(), *await client.get_with_reason("/healthz")))
            await asyncio.sleep(2.0)

    prober = asyncio.create_task(probe_health())
    await sleep_until(client, start + max(0.0, (args.outage_seconds - args.outage_hold) / 2))
    log.info("outage: store held for %.0f s", args.outage_hold)
    try:
        await asyncio.to_thread(hold_store, args, store_url, args.outage_hold, marks, client.now)
    except Exception as exc:  # the lock was not taken (or the commands failed): say so, keep going
        marks.setdefault("error", type(exc).__name__)
    await sleep_until(client, start + args.outage_seconds)
    stop.set()
    outcomes = await load
    await prober
    held, released = marks.get("held"), marks.get("released")
    attempts = [a for o in outcomes for a in o.attempts]
    got_503 = [o for o in outcomes if o.attempts[0].status == 503]
    store_named = sum(1 for o in got_503 if "store" in (o.attempts[0].error or ""))
    rows = await verify_rows(client, outcomes, args.concurrency)
    found = rows.pop("_found")
    ids_after = await asyncio.to_thread(_replica_ids, replicas)

    def during(t: float) -> bool:
        return held is not None and t >= held and (released is None or t < released)

    def phase(a: Attempt) -> str:
        if held is None or a.done < held:
            return "before"
        return "during" if released is None or a.sent < released else "after"

    first_200 = min(
        (a.done for a in attempts if released and a.sent >= released and a.status == 200), default=None
    )
    waits_503 = [(a.done - a.sent) * 1000 for a in attempts if a.status == 503]
    return {
        "store_backend": "sqlite" if is_sqlite else "postgresql",
        "how": "BEGIN EXCLUSIVE held by this process" if is_sqlite else "--stop-cmd / --start-cmd",
        "held_at_s": None if held is None else round(held - start, 1),
        "held_for_s": None if held is None or released is None else round(released - held, 1),
        "hold_error": marks.get("error"),
        "requests": len(outcomes),
        "status_codes": statuses(attempts),
        "status_codes_by_phase": {
            p: statuses([a for a in attempts if phase(a) == p]) for p in ("before", "during", "after")
        },
        "status_500": sum(1 for a in attempts if a.status == 500),
        "responses_503": len(got_503),
        "responses_503_naming_store": store_named,
        "latency_ms_503": {"p50": pct(waits_503, 50), "max": pct(waits_503, 100)},
        "partial_rows": sum(1 for o in got_503 if found[o.rid][0] == "row"),
        "lost_rows": rows["lost_rows"],
        "mismatched_rows": rows["mismatched_rows"],
        "unverified": rows["unverified"],
        "resumed_s": None if first_200 is None or released is None else round(first_200 - released, 2),
        "healthz_during_hold": statuses([Attempt(t, t, s) for t, s, _ in health if during(t)]),
        "healthz_reasons_during_hold": dict(Counter(r for t, s, r in health if during(t) and r)),
        "replicas_restarted": None
        if ids_before is None or ids_after is None
        else len(ids_before - ids_after),
        "load_s": round(client.now() - start, 1),
    }


def _replica_ids(replicas: Replicas) -> set[str] | None:
    try:
        return {r["actor_id"] for r in replicas.list()}
    except Exception:
        return None


def sample_rss(replicas: Replicas, samples: dict[str, dict[str, Any]], t: float) -> None:
    """RSS of every local replica process of the app, appended to its series (keyed by actor)."""
    import psutil

    for r in replicas.list():
        try:
            rss = psutil.Process(r["pid"]).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        entry = samples.setdefault(r["actor_id"], {"deployment": r["deployment"], "series": []})
        entry["series"].append((t, rss))


def rss_growth(samples: dict[str, dict[str, Any]], duration: float) -> tuple[float | None, list[dict]]:
    """Per replica: median RSS of the last minute against the first minute after the warm-up."""
    per_replica, growths = [], []
    for entry in samples.values():
        series = entry["series"]
        first = [rss for t, rss in series if WARMUP_S <= t < WARMUP_S + 60]
        last = [rss for t, rss in series if t >= duration - 60]
        row: dict[str, Any] = {"deployment": entry["deployment"], "samples": len(series)}
        if first and last:
            a, b = statistics.median(first), statistics.median(last)
            row |= {"first_mb": round(a / 2**20, 1), "last_mb": round(b / 2**20, 1)}
            row["growth_pct"] = round((b / a - 1) * 100, 2)
            growths.append(row["growth_pct"])
        else:
            row["growth_pct"] = None  # started or ended mid-soak (a restart or autoscaling)
        per_replica.append(row)
    return (max(growths) if growths else None), sorted(per_replica, key=lambda r: r["deployment"])


async def scenario_soak(args, client: Client, payloads: Payloads, replicas: Replicas) -> dict[str, Any]:
    """Steady open-loop load; errors and replica RSS over time."""
    duration = args.soak_minutes * 60
    start = client.now()
    samples: dict[str, dict[str, Any]] = {}
    outcomes: list[Outcome] = []
    in_flight: set[asyncio.Task] = set()
    skipped = 0
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            t = client.now() - start
            if replicas.verified:
                try:
                    await asyncio.to_thread(sample_rss, replicas, samples, t)
                except Exception as exc:
                    log.warning("RSS sample failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), RSS_EVERY_S)

    async def one() -> None:
        outcomes.append(await request(client, payloads, 0, "soak"))

    sampling = asyncio.create_task(sampler())
    n = int(duration * args.soak_rate)
    for i in range(n):
        await sleep_until(client, start + i / args.soak_rate)
        if len(in_flight) >= args.soak_max_in_flight:  # open loop, but bounded: count the misses
            skipped += 1
            continue
        task = asyncio.create_task(one())
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        if i and i % int(60 * args.soak_rate) == 0:
            log.info("soak: minute %d, %d answered", i // int(60 * args.soak_rate), len(outcomes))
    await sleep_until(client, start + duration)
    if in_flight:
        await asyncio.gather(*in_flight)
    if replicas.verified:  # a last sample at the end
        await asyncio.to_thread(sample_rss, replicas, samples, client.now() - start)
    done.set()
    await sampling
    growth, per_replica = rss_growth(samples, duration)
    attempts = [a for o in outcomes for a in o.attempts]
    latencies = [((a.done - a.sent) * 1000, a.sent - start) for a in attempts if a.status == 200]
    first = [ms for ms, t in latencies if t < 60]
    last = [ms for ms, t in latencies if t >= duration - 60]
    return {
        "minutes": args.soak_minutes,
        "rate_per_s": args.soak_rate,
        "requests": len(outcomes),
        "skipped_in_flight_cap": skipped,
        "errors": sum(1 for a in attempts if a.status != 200),
        "status_codes": statuses(attempts),
        "achieved_rps": round(sum(1 for a in attempts if a.status == 200) / duration, 2),
        "latency_ms_200": {
            "first_minute": {"p50": pct(first, 50), "p99": pct(first, 99)},
            "last_minute": {"p50": pct(last, 50), "p99": pct(last, 99)},
        },
        "rss_growth_pct": growth,
        "rss_by_replica": per_replica,
        "rss_note": None
        if duration >= WARMUP_S + 120
        else "soak shorter than warm-up + 2 minutes: the first and last minutes overlap",
        "rss_sampled": replicas.verified,
        "load_s": round(client.now() - start, 1),
    }


# --------------------------------------------------------------------------- main


def default_store_url() -> str:
    """The store the service uses under `make serve`: MEDISCALE_STORE_URL, else the data dir's
    SQLite file (MEDISCALE_DATA_DIR, else this repo's artifacts/)."""
    from data.config import Settings

    data_dir = None if os.environ.get("MEDISCALE_DATA_DIR") else ROOT / "artifacts"
    return Settings.from_env().resolved_store_url(data_dir)


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def git(*cmd: str) -> str | None:
    """Read-only git facts (no optional locks: nothing in .git is written)."""
    try:
        return subprocess.run(
            ["git", "--no-optional-locks", *cmd],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def setup_info(args) -> dict[str, Any]:
    import httpx
    import psutil
    import ray

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": None if status is None else bool(status),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "httpx": httpx.__version__,
        "psutil": psutil.__version__,
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "shared_with_other_jobs": True,
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    p.add_argument(
        "--key", default=os.environ.get("MEDISCALE_API_KEY"), help="Bearer key (default MEDISCALE_API_KEY)"
    )
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma list of kill,outage,soak")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--retries", type=int, default=8, help="kill: retries per request (same id)")
    p.add_argument("--timeout", type=float, default=35.0, help="per attempt (the proxy's is 30 s)")
    p.add_argument("--kill-seconds", type=float, default=90.0)
    p.add_argument("--recovery-timeout", type=float, default=90.0, help="kill: longest wait for a recovery")
    p.add_argument("--outage-seconds", type=float, default=40.0)
    p.add_argument("--outage-hold", type=float, default=15.0)
    p.add_argument(
        "--store-url", default=None, help="default: MEDISCALE_STORE_URL, else the data dir's SQLite"
    )
    p.add_argument("--stop-cmd", default=None, help="PostgreSQL: shell command that stops the database")
    p.add_argument("--start-cmd", default=None, help="PostgreSQL: shell command that starts it again")
    p.add_argument("--soak-minutes", type=float, default=10.0)
    p.add_argument("--soak-rate", type=float, default=5.0, help="requests/s, open loop")
    p.add_argument("--soak-max-in-flight", type=int, default=64)
    p.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265")
    p.add_argument("--ready-timeout", type=float, default=180.0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        p.error(f"--only: unknown scenario(s) {sorted(unknown)}")
    if not is_loopback(args.url) and not args.allow_remote:
        p.error(f"--url {args.url} is not a loopback address; pass --allow-remote to load it")
    return args


async def run(args) -> dict[str, Any]:
    payloads = Payloads(size=512, seed=1)
    client = Client(args.url, args.key, args.concurrency, args.timeout)
    replicas = Replicas(args.ray_address)
    report: dict[str, Any] = {
        "setup": setup_info(args),
        "params": {k: v for k, v in vars(args).items() if k not in ("key", "stop_cmd", "start_cmd", "json")}
        | {"key_given": bool(args.key), "stop_start_cmds_given": bool(args.stop_cmd and args.start_cmd)},
        "timings_s": {},
    }
    report["params"]["store_url"] = _masked(args.store_url or default_store_url())
    try:
        report["service"] = {"ready_wait_s": await wait_ready(client, payloads, args.ready_timeout)}
        await asyncio.to_thread(replicas.verify, await router_pid(client))
        report["service"] |= {"replicas_verified": replicas.verified, "replicas_check": replicas.reason}
        if replicas.verified:
            report["service"]["replicas_at_start"] = await asyncio.to_thread(replicas.counts)
        scenarios = {"kill": scenario_kill, "outage": scenario_outage, "soak": scenario_soak}
        todo = [name for name in SCENARIOS if name in args.only]
        for name in todo:
            started = time.monotonic()
            if name != todo[0]:
                report["service"][f"ready_wait_before_{name}_s"] = await wait_ready(
                    client, payloads, args.ready_timeout
                )
            log.info("%s: starting", name)
            report[name] = await scenarios[name](args, client, payloads, replicas)
            report["timings_s"][name] = round(time.monotonic() - started, 1)
            log.info("%s: done in %.0f s", name, report["timings_s"][name])
    finally:
        await client.close()
    report["error_answers"] = dict(client.details.most_common(20))  # ids redacted in each
    report["timings_s"]["total"] = round(client.now(), 1)
    report["setup"]["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return report


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines name each request id
    args = parse_args(argv)
    # `make serve`'s local cluster uses Ray's token auth (README: RAY_AUTH_MODE=token with its
    # dashboard); Ray's SDK then finds its own local token.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    emit(asyncio.run(run(args)), args.json)


if __name__ == "__main__":
    main()
