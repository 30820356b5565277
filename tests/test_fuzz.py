"""Fuzz the service's own OpenAPI spec with Schemathesis, over HTTP to the deployed application.

The schema is read from the running app's `/openapi.json`. Every operation in it gets the
coverage phase (boundary and type-violating values derived from the schema) and then the fuzzing
phase (random valid and invalid requests; `FUZZ_EXAMPLES` per operation), each request sent with
the session's admin key. Every response must be:

- not a 5xx (`not_a_server_error`);
- of a documented content type, where its status is documented (`content_type_conformance`);
- of a status the spec documents for that operation (`status_code_conformance`): 200, 422 with
  the one validation shape, and each refusal (404, 409, 413, 503 ...) as a `Problem`;
- conform to the schema the spec documents for its status (`response_schema_conformance`).

Ids the fuzz cannot guess: a few predictions are stored under known ids before it starts, and
about half of the generated `request_id`s (the path parameter, and POST /feedback's body field)
are swapped for one of them, so reading a prediction, first feedback, a repeated one (409) and
corrections run too, not only "no such prediction".

The run is deterministic (derandomized Hypothesis, no example database, no deadline).
Schemathesis runs every operation as a subtest of one pytest test; when that test ends it checks
that every operation of the spec was called, each at least its floor of times, and that the whole
fuzz sent at least `MIN_REQUESTS` (so it passes alone and in any order).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serving import app_config, auth, deploy

APP = "fuzz-app"
ROUTER = {
    "variants": {
        "champion": {"weight": 0.5, "tabular": "champion", "note": "champion"},
        "challenger": {"weight": 0.5, "tabular": "challenger", "note": "challenger"},
    },
    "shadow": False,  # no shadow scoring: thousands of predictions stay light on 2 cores
    "alias_refresh_s": 0,
}
# Fuzzing-phase examples per operation, on top of the coverage phase's (about 1,100 requests,
# most of them for the two predict bodies). A scored prediction costs ~170 ms on the 2-CPU test
# cluster and a refused or stored-row request ~15 ms, so the cheap operations carry the volume:
# 5,532 requests in 175 s measured alone (the JUnit report's `requests_per_operation`).
# Parameterless operations stop after a few.
FUZZ_EXAMPLES = {
    "POST /predict": 120,
    "POST /predict/batch": 60,
    "GET /predictions/{request_id}": 1_400,
    "POST /feedback": 1_400,
    "PUT /feedback/{request_id}": 1_400,
}
# Requests each operation must have been sent: 90% of its fuzzing-phase examples (Hypothesis may
# end a little early), and at least one for the parameterless operations.
FLOOR = {label: int(0.9 * count) for label, count in FUZZ_EXAMPLES.items()}
MIN_REQUESTS = 5_000  # across all operations (the floor)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
KNOWN_IDS = [f"fuzz-{i}" for i in range(4)] + [f"fuzz-b~{i}" for i in range(3)]

SENT: Counter[str] = Counter()  # operation label -> responses the fuzz received
_current: list[str] = [""]  # the operation under test, for the session's response hook


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-store") / "predictions.db"


@pytest.fixture(scope="module")
def base_url(serve_port: int, registered_models: dict, store_path: Path) -> str:
    args = {
        "data_dir": str(registered_models["home"]),
        "store_url": f"sqlite:///{store_path}",
        "max_note_chars": 5000,
    }
    deploy(app_config(APP, "/", args, ROUTER))
    return f"http://127.0.0.1:{serve_port}"


@pytest.fixture(scope="module")
def known_ids(base_url: str) -> list[str]:
    """Predictions stored under `KNOWN_IDS` (single and batch ids) before the fuzz starts."""
    with httpx.Client(headers=auth(), base_url=base_url, timeout=60) as http:
        for i in range(4):
            reply = http.post("/predict", json={"age": 60 + i}, headers={"x-request-id": f"fuzz-{i}"})
            assert reply.status_code == 200, reply.text
        records = [{"age": 70}, {"age": 80, "clinical_note": "Lives alone. Denies chest pain."}, {}]
        reply = http.post("/predict/batch", json={"records": records}, headers={"x-request-id": "fuzz-b"})
        assert reply.status_code == 200, reply.text
    return list(KNOWN_IDS)


def _or_known_id(value: Any, ids: list[str]) -> st.SearchStrategy:
    """The generated value, or (when it is an object) the same with a stored `request_id`."""
    if not isinstance(value, dict):
        return st.just(value)
    return st.one_of(st.just(value), st.sampled_from(ids).map(lambda rid: {**value, "request_id": rid}))


@pytest.fixture(scope="module")
def api_schema(base_url: str, known_ids: list[str]) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            # Schemathesis already runs Hypothesis without a deadline.
            "suppress-health-check": ["too_slow", "filter_too_much"],
            "base-url": base_url,
            "request-timeout": 60,
            "generation": {
                "deterministic": True,  # derandomized: the same requests on every run
                "database": "none",  # nothing saved under .hypothesis/ between runs
            },
            "operations": [
                {"include-name": label, "generation": {"max-examples": count}}
                for label, count in FUZZ_EXAMPLES.items()
            ],
        }
    )
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config, timeout=60)

    def flatmap_path_parameters(context: schemathesis.HookContext, parameters: Any) -> st.SearchStrategy:
        return _or_known_id(parameters, known_ids)

    def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy:
        if context.operation is not None and context.operation.label == "POST /feedback":
            return _or_known_id(body, known_ids)
        return st.just(body)

    schema.hook(flatmap_path_parameters)
    schema.hook(flatmap_body)
    return schema


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """One keep-alive connection for the whole fuzz; counts every response it receives."""

    def count(response: requests.Response, *args: object, **kwargs: object) -> None:
        SENT[_current[0]] += 1

    with requests.Session() as http:
        http.hooks["response"].append(count)
        yield http


@pytest.fixture
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Schemathesis 4.32's `from_fixture` reads and rewrites `request.node._nodeid`, which pytest
    9.2 no longer has (the node id lives in `_id`): give it the attribute it expects. Harmless
    once Schemathesis stops using it (it then only relabels its per-operation reports)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture
def _enough_requests(api_schema: schemathesis.BaseSchema, record_property: Callable) -> Iterator[None]:
    """When the fuzz ends: every operation of the spec got at least its floor of requests, and the
    whole fuzz at least `MIN_REQUESTS`."""
    operations = {result.ok().label for result in api_schema.get_all_operations() if isinstance(result, Ok)}
    before = SENT.copy()
    yield
    sent = {label: SENT[label] - before[label] for label in operations}
    record_property("requests_per_operation", sent)  # in the JUnit report
    short = {label: n for label, n in sent.items() if n < FLOOR.get(label, 1)}
    assert not short, f"operations under their floor of requests: {short}; sent {sent}"
    assert sum(sent.values()) >= MIN_REQUESTS, f"only {sum(sent.values())} requests: {sent}"


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)  # ~5,500 requests: 175-360 s measured (training setup: conftest adds its own)
@schema.parametrize()
@pytest.mark.usefixtures("_node_id_for_schemathesis", "_enough_requests")
def test_fuzz_the_openapi_spec(case: schemathesis.Case, session: requests.Session) -> None:
    _current[0] = case.operation.label
    case.call_and_validate(session=session, headers=auth("admin"), checks=CHECKS)
