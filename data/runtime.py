"""Process set-up shared by the stage CLIs: logging and connecting to Ray."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

# Errors that mean "the input is wrong" (ValueError covers the project's own error classes).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError)  # OSError: paths, S3


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
    from data.config import Settings

    address = Settings.from_env().ray_address
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """CLI commands: bad input ends with one `error: ...` line and exit code 2, no traceback."""
    import typer

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper
