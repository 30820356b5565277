"""What a test needs from the machine (the real datasets, a server binary, a browser).

On a developer's machine a missing prerequisite skips the test with the reason. Under CI (`CI` set,
as `.ci/run` does) it fails the test instead: CI installs or provides everything and must run every
test, so a skip there would hide a test that never ran. tests/conftest.py also turns any other
skip under CI into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """Skip with `reason`, or fail under CI."""
    if in_ci():
        pytest.fail(
            f"{reason}; CI must run this test, not skip it (.ci/run provides what it needs)", pytrace=False
        )
    pytest.skip(reason)


def shared_dataset(folder: Path, *parts: str) -> Path:
    """`folder/parts...` of the real datasets when it exists, else `missing`."""
    path = folder.joinpath(*parts)
    if not path.exists():
        missing(f"{path} not found (the real datasets: set MEDISCALE_DATASETS)")
    return path
