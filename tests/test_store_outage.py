"""The prediction store goes away under a running service and comes back: PostgreSQL stopped and
started again (the SQLite lock is in tests/test_serve_input.py). `/predict` answers 503 naming
the store, never 500 and within the request timeout; `/healthz` says why; nothing half-written
stays; once the server is back the same request id succeeds, without a restart."""

from __future__ import annotations

import time

import httpx
import pytest
import sqlalchemy as sa
from serving import app_config, auth, deploy

ROUTER = {
    "variants": {"champion": {"weight": 1.0, "tabular": "champion"}},
    "shadow": False,
    "alias_refresh_s": 0,
}


@pytest.fixture(scope="module")
def base_url(serve_port: int, registered_models: dict, own_postgres) -> str:
    args = {"data_dir": str(registered_models["home"]), "store_url": own_postgres.url}
    deploy(app_config("outage-app", "/", args, ROUTER))
    return f"http://127.0.0.1:{serve_port}"


def stored(url: str) -> list[str]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return sorted(conn.execute(sa.text("SELECT request_id FROM predictions")).scalars())
    finally:
        engine.dispose()


def test_postgres_down_is_503_and_service_resumes_when_it_returns(base_url: str, own_postgres) -> None:
    with httpx.Client(headers=auth(), base_url=base_url, timeout=60) as http:
        first = http.post("/predict", json={"age": 70}, headers={"x-request-id": "pg-1"})
        assert first.status_code == 200, first.text
        assert http.get("/healthz").status_code == 200
        own_postgres.stop()
        try:
            started = time.monotonic()
            down = http.post("/predict", json={"age": 71}, headers={"x-request-id": "pg-2"})
            waited = time.monotonic() - started
            assert down.status_code == 503, down.text
            assert "prediction store unavailable" in down.json()["detail"], down.text
            assert waited < 30, waited  # inside the proxy's request timeout: the client gets the 503
            health = http.get("/healthz")
            assert health.status_code == 503 and "prediction store" in health.json()["reason"]
            feedback = http.post("/feedback", json={"request_id": "pg-1", "outcome": True})
            assert feedback.status_code == 503, feedback.text
        finally:
            own_postgres.start()
        deadline = time.time() + 30
        again = http.post("/predict", json={"age": 71}, headers={"x-request-id": "pg-2"})
        while again.status_code == 503 and time.time() < deadline:  # the pool reconnects
            time.sleep(1.0)
            again = http.post("/predict", json={"age": 71}, headers={"x-request-id": "pg-2"})
        assert again.status_code == 200, again.text
        assert http.get("/healthz").status_code == 200
    assert stored(own_postgres.url) == ["pg-1", "pg-2"]  # once each, nothing half-written


def test_an_outage_under_load_loses_nothing_and_half_writes_nothing(base_url: str, own_postgres) -> None:
    """Four clients keep posting while the server stops and starts: only 200s and 503s, every 200
    has its row, no 503 left one, and 200s come back without a restart."""
    import threading

    answers: dict[str, int] = {}
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(headers=auth("predict"), base_url=base_url, timeout=60) as http:
            i = 0
            while not stop.is_set():
                request_id = f"load-{n}-{i}"
                answers[request_id] = http.post(
                    "/predict", json={"age": 50 + i % 40}, headers={"x-request-id": request_id}
                ).status_code
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        own_postgres.stop()
        time.sleep(8)
    finally:
        own_postgres.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(2)
        recent = list(answers.values())[-8:]
        if recent and all(code == 200 for code in recent):
            break
    stop.set()
    for thread in threads:
        thread.join(120)
    codes = set(answers.values())
    assert codes <= {200, 503}, codes
    assert 503 in codes and list(answers.values())[-1] == 200
    rows = set(stored(own_postgres.url))
    ok = {rid for rid, code in answers.items() if code == 200}
    refused = {rid for rid, code in answers.items() if code == 503}
    assert ok <= rows  # every 200 was committed
    assert not (refused & rows)  # no 503 left a row
