"""Process set-up shared by the stage CLIs: logging and connecting to Ray."""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def init_ray(num_cpus: int | None = None, log_to_driver: bool = False) -> None:
    """Join the cluster named by RAY_ADDRESS (e.g. under `ray job submit`), else start one.

    Worker logs stay in the session log folder by default, so a command's stdout carries
    only its own result (the JSON summaries are meant to be piped).
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver)
