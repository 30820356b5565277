"""API keys, roles, the audit log and per-key rate limits.

Unit tests of the key store, the policy and the token buckets, then HTTP tests against a deployed
app behind the session's proxy gate (conftest's `api_keys`: the proxy runs serve/gate.py).
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serving import KEYS, app_config, auth, deploy

from serve.auth import credentials, policy
from serve.keys import KEYRING_TTL_S, FileKeys, KeyRequestError, Keyring, create, hash_key
from serve.ratelimit import TokenBuckets

REPO = Path(__file__).resolve().parents[1]
APP = "auth-app"
ROUTER = {
    "variants": {"champion": {"weight": 1.0, "tabular": "champion"}},
    "shadow": False,
    "alias_refresh_s": 0,
    "saturated_in_flight": 2,  # low, so the saturation test can reach it
}


# --------------------------------------------------------------------------- units


def test_keys_are_stored_as_hashes_and_found_in_any_record(tmp_path: Path) -> None:
    source = FileKeys(tmp_path / "keys.json")
    alice, alice_key = create(source, "alice", "predict")
    _, bob_key = create(source, "bob", "read", rate_per_minute=30)
    text = (tmp_path / "keys.json").read_text()
    assert alice_key not in text and bob_key not in text and hash_key(alice_key) in text
    assert oct((tmp_path / "keys.json").stat().st_mode & 0o777) == "0o600"
    ring = Keyring(source, ttl_s=0)
    assert ring.find(alice_key) == alice
    assert ring.find(bob_key).rate_per_minute == 30
    assert ring.find(alice_key[:-1] + ("A" if alice_key[-1] != "A" else "B")) is None
    assert ring.find("") is None and ring.find(None) is None
    source.revoke("alice")
    assert ring.find(alice_key) is None and ring.find(bob_key) is not None


@pytest.mark.parametrize(
    ("name", "role", "problem"),
    [("", "read", "name"), ("a b", "read", "name"), ("x" * 65, "read", "name"), ("ok", "root", "role")],
)
def test_bad_key_requests_name_the_field(tmp_path: Path, name: str, role: str, problem: str) -> None:
    with pytest.raises(KeyRequestError, match=f"^{problem}:"):
        create(FileKeys(tmp_path / "k.json"), name, role)


def test_a_name_is_taken_once(tmp_path: Path) -> None:
    source = FileKeys(tmp_path / "k.json")
    create(source, "svc", "read")
    with pytest.raises(KeyRequestError, match="exists"):
        create(source, "svc", "admin")


def test_policy_maps_paths_under_any_prefix_to_roles() -> None:
    assert policy("POST", "/predict").roles == {"predict"}
    assert policy("POST", "/clinic/predict/batch").endpoint == "predict_batch"
    assert policy("GET", "/predictions/abc").roles == {"read"}
    assert policy("PUT", "/feedback/abc").roles == {"admin"}
    assert policy("POST", "/feedback").roles == {"feedback"}
    assert policy("GET", "/dashboard/drift/3").roles == {"read"}
    assert not policy("GET", "/healthz").roles and not policy("GET", "/openapi.json").roles
    assert policy("GET", "/anything/else").roles  # unknown paths still need a key


def test_credentials_from_bearer_header_and_basic() -> None:
    basic = base64.b64encode(b"reader:msk_abc").decode()
    assert credentials([(b"authorization", b"Bearer msk_abc")]) == "msk_abc"
    assert credentials([(b"x-api-key", b"msk_abc")]) == "msk_abc"
    assert credentials([(b"authorization", f"Basic {basic}".encode())]) == "msk_abc"
    assert credentials([(b"authorization", b"Basic !!notbase64")]) is None
    assert credentials([(b"authorization", b"Token msk_abc")]) is None


def test_token_bucket_allows_a_burst_then_says_when() -> None:
    buckets = TokenBuckets()
    waits = [buckets.take("k", 60, now=100.0) for _ in range(11)]
    assert waits[:10] == [0.0] * 10 and waits[10] == pytest.approx(1.0)
    assert buckets.take("k", 60, now=101.0) == 0.0  # one second refills one request
    assert buckets.take("other", 60, now=101.0) == 0.0  # buckets are per key


@pytest.mark.parametrize("where", ["key file", "store table"])
def test_cli_creates_lists_and_revokes(tmp_path: Path, where: str) -> None:
    path = tmp_path / ("cli-keys.json" if where == "key file" else "predictions.db")
    env = {k: v for k, v in os.environ.items() if k != "MEDISCALE_API_KEYS_FILE"}
    store = []
    if where == "key file":
        env["MEDISCALE_API_KEYS_FILE"] = str(path)
    else:
        store = ["--store-url", f"sqlite:///{path}"]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "serve", "keys", *args, *store],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )

    made = cli("create", "--role", "feedback", "--name", "ehr-feed")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("msk_") and key.encode() not in path.read_bytes()
    assert hash_key(key).encode() in path.read_bytes()  # the hash is what is kept
    listed = json.loads(cli("list", "--json").stdout)
    assert listed == [
        {"name": "ehr-feed", "role": "feedback", "rate_per_minute": None,
         "created_at": listed[0]["created_at"], "revoked_at": None}
    ]  # fmt: skip
    assert key not in cli("list").stdout
    bad = cli("create", "--role", "superuser", "--name", "x")
    assert bad.returncode == 2 and "role:" in bad.stderr and "Traceback" not in bad.stderr
    assert cli("revoke", "ehr-feed").returncode == 0
    assert json.loads(cli("list", "--json").stdout)[0]["revoked_at"]


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth-store") / "predictions.db"


@pytest.fixture(scope="module")
def base_url(serve_port: int, registered_models: dict, store_path: Path) -> str:
    config = app_config(
        APP, "/", {"data_dir": str(registered_models["home"]), "store_url": f"sqlite:///{store_path}"}, ROUTER
    )
    for deployment in config["deployments"]:
        if deployment["name"] == "Router":
            deployment["num_replicas"] = 2  # the rate limit must hold across replicas
            deployment["max_ongoing_requests"] = 32  # as in serve/config.yaml: /healthz is not queued
    deploy(config)
    return f"http://127.0.0.1:{serve_port}"


def audit_rows(store_path: Path, at_least: int = 0, timeout: float = 10.0) -> list[dict]:
    """The access log; waits until it has `at_least` rows (a row is written just after its answer)."""
    deadline = time.time() + timeout
    while True:
        rows = []
        if store_path.exists():
            with sqlite3.connect(store_path) as conn:
                conn.row_factory = sqlite3.Row
                if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'access_log'").fetchone():
                    rows = [dict(r) for r in conn.execute("SELECT * FROM access_log ORDER BY id")]
        if len(rows) >= at_least or time.time() > deadline:
            return rows
        time.sleep(0.2)


def new_key(role: str, name: str, rate_per_minute: int | None = None) -> str:
    """A key added to the session's key file (the service sees it within the keyring's 5 s)."""
    return create(FileKeys(os.environ["MEDISCALE_API_KEYS_FILE"]), name, role, rate_per_minute)[1]


def wait_until_known() -> None:
    """Every proxy and replica re-reads the keys within the keyring's time to live."""
    time.sleep(KEYRING_TTL_S + 1.0)


def test_no_key_is_401_and_healthz_stays_open(base_url: str) -> None:
    for method, path in [
        ("POST", "/predict"),
        ("POST", "/feedback"),
        ("GET", "/variants"),
        ("GET", "/predictions/x"),
    ]:
        reply = httpx.request(method, base_url + path, json={})
        assert reply.status_code == 401, (path, reply.text)
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert reply.json()["detail"].startswith("a valid API key is required")
    wrong = httpx.post(f"{base_url}/predict", json={"age": 60}, headers={"Authorization": "Bearer msk_wrong"})
    assert wrong.status_code == 401
    assert httpx.get(f"{base_url}/healthz").status_code in (200, 503)  # open: no 401


@pytest.mark.parametrize(
    ("role", "method", "path", "body"),
    [
        ("read", "POST", "/predict", {"age": 60}),
        ("predict", "POST", "/feedback", {"request_id": "r1", "outcome": True}),
        ("feedback", "GET", "/variants", None),
        ("predict", "GET", "/predictions/r1", None),
        ("feedback", "POST", "/predict/batch", {"records": [{"age": 60}]}),
    ],
)
def test_the_wrong_role_is_403_refused_in_the_proxy(
    base_url: str, store_path: Path, role: str, method: str, path: str, body: dict | None
) -> None:
    from data.config import Settings

    proxy_store = Path(Settings.from_env().resolved_store_url().removeprefix("sqlite:///"))
    before = len(audit_rows(store_path))
    proxy_before = len(audit_rows(proxy_store))
    reply = httpx.request(method, base_url + path, json=body, headers=auth(role))
    assert reply.status_code == 403, reply.text
    assert f"role {role!r}" in reply.json()["detail"]
    # Refused in the proxy: the proxy audited it (in the settings' store, which in production is
    # the app's), and no replica saw it.
    refused = audit_rows(proxy_store, proxy_before + 1)[proxy_before:]
    assert audit_rows(store_path)[before:] == []
    assert [(r["key_name"], r["status"], r["where"]) for r in refused] == [(f"test-{role}", 403, "proxy")]


def test_each_role_reaches_its_endpoints_and_every_call_is_audited(base_url: str, store_path: Path) -> None:
    predicted = httpx.post(
        f"{base_url}/predict",
        json={"patient_id": "Qpat-991", "age": 70, "clinical_note": "Lives alone. Qnote-22"},
        headers={**auth("predict"), "x-request-id": "aud-1"},
        timeout=60,
    )
    assert predicted.status_code == 200, predicted.text
    fed = httpx.post(
        f"{base_url}/feedback", json={"request_id": "aud-1", "outcome": True}, headers=auth("feedback")
    )
    assert fed.status_code == 200, fed.text
    read = httpx.get(f"{base_url}/predictions/aud-1", headers=auth("read"))
    assert read.status_code == 200 and read.json()["feedback"]["outcome"] is True
    assert httpx.get(f"{base_url}/variants", headers=auth("read")).status_code == 200
    assert httpx.post(f"{base_url}/predict", json={"age": "x"}, headers=auth("admin")).status_code == 422
    rows = audit_rows(store_path, 5)
    time.sleep(1.0)  # the last call's row is written just after its answer
    rows = audit_rows(store_path)
    mine = {
        (r["key_name"], r["role"], r["method"], r["endpoint"], r["request_id"], r["status"], r["where"])
        for r in rows
    }
    assert ("test-predict", "predict", "POST", "predict", "aud-1", 200, "replica") in mine
    assert ("test-feedback", "feedback", "POST", "feedback", None, 200, "replica") in mine
    assert ("test-read", "read", "GET", "predictions", None, 200, "replica") in mine
    assert any(r[0] == "test-admin" and r[5] == 422 for r in mine)
    text = json.dumps(rows, default=str)
    for secret in ("Qpat-991", "Qnote-22", KEYS["predict"], "Lives alone"):
        assert secret not in text


def test_feedback_is_corrected_by_admin_only_with_history(base_url: str) -> None:
    made = httpx.post(
        f"{base_url}/predict", json={"age": 66}, headers={**auth("predict"), "x-request-id": "cor-1"}
    )
    assert made.status_code == 200, made.text
    early = httpx.put(
        f"{base_url}/feedback/cor-1", json={"outcome": True, "reason": "chart review"}, headers=auth()
    )
    assert early.status_code == 404 and "POST /feedback first" in early.json()["detail"]
    first = httpx.post(
        f"{base_url}/feedback", json={"request_id": "cor-1", "outcome": False}, headers=auth("feedback")
    )
    assert first.status_code == 200, first.text
    again = httpx.post(
        f"{base_url}/feedback", json={"request_id": "cor-1", "outcome": True}, headers=auth("feedback")
    )
    assert again.status_code == 409 and "PUT /feedback/" in again.json()["detail"]
    body = {"outcome": True, "reason": "readmitted at another hospital (chart review)"}
    assert httpx.put(f"{base_url}/feedback/cor-1", json=body, headers=auth("feedback")).status_code == 403
    assert (
        httpx.put(
            f"{base_url}/feedback/cor-1", json={"outcome": "yes", "reason": "x"}, headers=auth()
        ).status_code
        == 422
    )
    assert httpx.put(f"{base_url}/feedback/cor-1", json={"outcome": True}, headers=auth()).status_code == 422
    blank = httpx.put(f"{base_url}/feedback/cor-1", json={"outcome": True, "reason": "  "}, headers=auth())
    # every 422 has the one documented shape (HTTPValidationError), the app's own rules included
    assert blank.status_code == 422 and blank.json()["detail"][0]["loc"] == ["body", "reason"]
    none = httpx.put(f"{base_url}/feedback/cor-none", json=body, headers=auth())
    assert none.status_code == 404 and none.json() == {"detail": "request_id: no such prediction"}
    fixed = httpx.put(f"{base_url}/feedback/cor-1", json=body, headers=auth())
    assert fixed.status_code == 200, fixed.text
    history = fixed.json()["history"]
    assert [(h["kind"], h["outcome"], h["key_name"]) for h in history] == [
        ("first", False, "test-feedback"),
        ("correction", True, "test-admin"),
    ]
    stored = httpx.get(f"{base_url}/predictions/cor-1", headers=auth("read")).json()
    assert stored["feedback"]["outcome"] is True


def test_a_revoked_key_is_refused_within_seconds(base_url: str) -> None:
    key = new_key("read", "short-lived")
    wait_until_known()
    first = httpx.get(f"{base_url}/variants", headers={"Authorization": f"Bearer {key}"})
    assert first.status_code == 200, first.text
    FileKeys(os.environ["MEDISCALE_API_KEYS_FILE"]).revoke("short-lived")
    deadline, codes = time.time() + 20, []
    while time.time() < deadline:
        codes.append(
            httpx.get(f"{base_url}/variants", headers={"Authorization": f"Bearer {key}"}).status_code
        )
        if codes[-1] == 401:
            return
        time.sleep(0.5)
    raise AssertionError(f"a revoked key still worked after 20 s: {codes}")


def test_the_rate_limit_is_shared_by_the_replicas_and_says_when(base_url: str, store_path: Path) -> None:
    key = new_key("predict", "slow-client", rate_per_minute=6)  # a burst of 1, then one per 10 s
    wait_until_known()
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    replies = [
        httpx.post(f"{base_url}/predict", json={"age": 50 + i}, headers=headers, timeout=60) for i in range(8)
    ]
    codes = [r.status_code for r in replies]
    # One bucket for the service: the burst's one request, then nothing until it refills (a
    # bucket per replica would let each replica's token through).
    refills = int((time.monotonic() - started) / 10)
    assert codes.count(200) == 1 + refills and codes.count(429) == 7 - refills, codes
    limited = next(r for r in replies if r.status_code == 429)
    assert 1 <= int(limited.headers["retry-after"]) <= 10
    assert "slow-client" in limited.json()["detail"]
    time.sleep(1.0)  # rows are written just after their answers
    assert any(r["key_name"] == "slow-client" and r["status"] == 429 for r in audit_rows(store_path))
    pids = {
        httpx.get(f"{base_url}/variants", headers=auth("read")).json()["replica"]["pid"] for _ in range(12)
    }
    assert len(pids) == 2  # two Router replicas answered this module's calls


def test_the_proxy_s_own_500_becomes_a_retryable_503_and_app_500s_pass() -> None:
    import asyncio

    from serve.auth import _ReplicaLost

    async def run(start_headers: list, body: bytes) -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        wrapped = _ReplicaLost(send)
        await wrapped({"type": "http.response.start", "status": 500, "headers": start_headers})
        await wrapped({"type": "http.response.body", "body": body})
        return sent

    lost = asyncio.run(run([(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"))
    assert lost[0]["status"] == 503 and (b"retry-after", b"1") in lost[0]["headers"]
    assert "same x-request-id" in json.loads(lost[1]["body"])["detail"]
    own = asyncio.run(run([(b"content-type", b"application/json")], b'{"detail": "internal error"}'))
    assert own[0]["status"] == 500 and own[1]["body"] == b'{"detail": "internal error"}'


def test_healthz_reports_saturation_then_recovers(base_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    batch = {"records": [{"age": 40 + i % 50, "clinical_note": "Lives alone. " * 20} for i in range(200)]}

    def post(i: int) -> int:
        reply = httpx.post(f"{base_url}/predict/batch", json=batch, headers=auth("predict"), timeout=120)
        return reply.status_code

    seen: list[dict] = []
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, i) for i in range(8)]
        while not all(f.done() for f in futures):
            reply = httpx.get(f"{base_url}/healthz", timeout=30)
            seen.append(reply.json())
            time.sleep(0.05)
        assert [f.result() for f in futures] == [200] * 8
    assert any(b.get("status") == "saturated" and "in flight" in b["reason"] for b in seen), [
        (b.get("status"), b.get("in_flight")) for b in seen
    ]
    deadline = time.time() + 30
    while httpx.get(f"{base_url}/healthz", timeout=30).status_code != 200:
        assert time.time() < deadline, "still unhealthy after the load ended"
        time.sleep(0.5)


@pytest.mark.parametrize("ending", ["returns without an answer", "raises"])
def test_a_request_lost_with_its_replica_is_a_503_from_the_proxy_gate(tmp_path: Path, ending: str) -> None:
    """Ray 2.60's proxy ends a call whose replica died by sending nothing (its 500 has no ASGI
    message; uvicorn then sends a bare 500, as the kill benchmark saw), or by raising."""
    import asyncio

    from ray.exceptions import ActorDiedError

    from serve.auth import AuthGate, GateContext

    source = FileKeys(tmp_path / "keys.json")
    _, key = create(source, "k", "predict")

    async def dying_app(scope, receive, send):  # what the proxy's call does when the replica dies
        if ending == "raises":
            raise ActorDiedError()

    gate = AuthGate(dying_app, context=lambda: GateContext(keyring=Keyring(source)), where="proxy")
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict",
             "headers": [(b"authorization", f"Bearer {key}".encode())]}  # fmt: skip
    asyncio.run(gate(scope, None, send))
    assert sent[0]["status"] == 503 and "same x-request-id" in json.loads(sent[1]["body"])["detail"]
