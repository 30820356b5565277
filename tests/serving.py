"""Serve fixtures shared by the HTTP test modules: a Serve instance per module on a free port, and
`deploy`, which applies a whole multi-application config as `serve deploy serve/config.yaml` does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serve.settings import NoteBatchConfig


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KEYS: dict[str, str] = {}  # role -> the session's key (conftest's `api_keys`)


def auth(role: str = "admin") -> dict[str, str]:
    """The header a client with this role sends."""
    return {"Authorization": f"Bearer {KEYS[role]}"}


QUARTER_CPU = {"num_cpus": 0.25}  # two applications side by side fit the 2-CPU test cluster
DEPLOYED: dict[str, dict] = {}  # what `serve deploy` would hold: every app of the cluster's config


def app_config(name: str, route_prefix: str, args: dict, router: dict) -> dict:
    """One application in serve/config.yaml's format: built from `serve.app:build_app` by import
    path, as `serve deploy` does, so a change of user_config alone reconfigures in place."""
    return {
        "name": name,
        "route_prefix": route_prefix,
        "import_path": "serve.app:build_app",
        "args": args,
        "deployments": [
            {"name": "TabularScorer", "ray_actor_options": QUARTER_CPU},
            {
                "name": "NoteScorer",
                "ray_actor_options": QUARTER_CPU,
                "user_config": NoteBatchConfig().model_dump(),
            },
            {"name": "Router", "ray_actor_options": QUARTER_CPU, "user_config": router},
        ],
    }


def deploy(config: dict | None = None, remove: str | None = None) -> None:
    """Apply the whole multi-application config (what `serve deploy serve/config.yaml` does)."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    if config:
        DEPLOYED[config["name"]] = config
    if remove:
        DEPLOYED.pop(remove, None)
        if not DEPLOYED:  # an empty config never reports "running": delete the last app directly
            from ray import serve

            serve.delete(remove)
            return
    _get_global_client().deploy_apps(ServeDeploySchema(applications=list(DEPLOYED.values())), _blocking=True)


@pytest.fixture(scope="module")
def serve_port(ray_cluster: object) -> Iterator[int]:
    from ray import serve

    DEPLOYED.clear()  # a previous module's applications went with its Serve instance
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    DEPLOYED.clear()
