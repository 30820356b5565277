"""What the running service says about routing: configured weights and the risk bands.

The sample-ratio check compares the observed split with the weights the Router was given, and
the report's sensitivity / PPV use its high-risk threshold. Both come from the live service
(`GET /variants`); without one (a batch job with no route to the service) from the Router's
`user_config` in serve/config.yaml, and the report says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

SERVE_CONFIG = Path(__file__).resolve().parents[1] / "serve" / "config.yaml"


@dataclass(frozen=True)
class Routing:
    weights: dict[str, float]
    high_risk: float
    source: str


def from_service(url: str, timeout: float = 5.0) -> Routing:
    import httpx

    from data.config import Settings

    headers = Settings.from_env().service_headers()  # role read (MEDISCALE_API_KEY)
    response = httpx.get(url.rstrip("/") + "/variants", headers=headers, timeout=timeout)
    response.raise_for_status()
    body = response.json()
    weights = {name: float(v["weight"]) for name, v in body["variants"].items()}
    high = float((body.get("risk_bands") or {}).get("high", _default_high()))
    return Routing(weights, high, f"service {url}")


def from_config(path: Path = SERVE_CONFIG) -> Routing:
    from serve.settings import RouterConfig

    try:
        config = yaml.safe_load(Path(path).read_text())
        app = config["applications"][0]
        router = next(d for d in app["deployments"] if d["name"] == "Router")
        parsed = RouterConfig.model_validate(router.get("user_config") or {})
    except (OSError, KeyError, IndexError, StopIteration, TypeError, yaml.YAMLError) as err:
        raise ValueError(
            f"{path}: no Router user_config to read weights from ({type(err).__name__})"
        ) from None
    return Routing({n: v.weight for n, v in parsed.variants.items()}, parsed.high_risk, f"config {path}")


def _default_high() -> float:
    from serve.settings import RouterConfig

    return RouterConfig().high_risk


def routing(service_url: str | None, config_path: Path | None = None) -> Routing:
    """The live service's routing if it answers, else the config file's (noted in `source`)."""
    if service_url:
        try:
            return from_service(service_url)
        except Exception as exc:  # unreachable or not MediScale: fall back, and say so
            fallback = from_config(config_path or SERVE_CONFIG)
            return Routing(
                fallback.weights,
                fallback.high_risk,
                f"{fallback.source} (service {service_url} not reachable: {type(exc).__name__})",
            )
    return from_config(config_path or SERVE_CONFIG)
