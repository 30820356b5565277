"""Where searches live and how they stop and resume: shared by the XGBoost and note-model searches.

A search lives in `<data dir>/tune/<name>`: Tune's own state beside `search.json` (our settings and
the MLflow parent run), so `Tuner.restore` can resume it; `result.json` once it has finished.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data.config import Settings

if TYPE_CHECKING:
    import pandas as pd
    import ray.tune
    from pydantic import BaseModel

TUNE_DIR = "tune"
SEARCH_FILE = "search.json"
RESULT_FILE = "result.json"


class SearchError(ValueError):
    """A search that cannot be started or resumed as asked (user error, exit code 2)."""


class SearchInterrupted(RuntimeError):
    """The search stopped before all trials finished (Ctrl+C, SIGUSR1); it can be resumed."""

    def __init__(self, name: str, path: Path):
        super().__init__(
            f"search {name!r} was interrupted; its state is in {path}. "
            f"Resume with: python -m tune xgboost --resume --name {name}"
        )
        self.name = name
        self.path = path


def tune_root(settings: Settings | None = None) -> Path:
    return (settings or Settings.from_env()).data_dir.resolve() / TUNE_DIR


def check_resumable(name: str, settings: Settings | None = None) -> Path:
    """The folder of search `name` if it can be resumed, else a SearchError (cheap: no Ray needed)."""
    import ray.tune

    path = tune_root(settings) / name
    if not (path / SEARCH_FILE).exists() or not ray.tune.Tuner.can_restore(str(path)):
        raise SearchError(f"no resumable search {name!r} in {path.parent}")
    return path


def load_saved_search(name: str, settings: Settings | None = None) -> tuple[Path, dict[str, Any]]:
    """(folder, search.json) of a resumable search: its config, MLflow experiment and parent run."""
    path = check_resumable(name, settings)
    return path, json.loads((path / SEARCH_FILE).read_text())


def save_search(path: Path, config: BaseModel, experiment_id: str, parent_run_id: str) -> None:
    """search.json: what `load_saved_search` reads back to resume the search."""
    record = {
        "config": config.model_dump(),
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (path / SEARCH_FILE).write_text(json.dumps(record, indent=2))


def check_new(name: str, settings: Settings | None = None) -> Path:
    """The folder for a new search `name`; a SearchError if a search of that name exists."""
    path = tune_root(settings) / name
    if path.exists():
        raise SearchError(f"{path} already exists: pick another --name, or --resume it")
    return path


def latest_experiment(settings: Settings | None = None) -> str:
    """The most recently started search under the data dir (for `--resume` without a name)."""
    root = tune_root(settings)
    found = sorted(root.glob(f"*/{SEARCH_FILE}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not found:
        raise SearchError(f"no search to resume under {root}")
    return found[-1].parent.name


def fit_tuner(tuner: ray.tune.Tuner, client: Any, parent_run_id: str) -> Any:
    """`tuner.fit()` keeping the terminal's signal handlers; a crash marks the parent run FAILED."""
    try:
        with restoring_signal_handlers():
            return tuner.fit()
    except BaseException:
        client.set_terminated(parent_run_id, "FAILED")
        raise


@contextlib.contextmanager
def restoring_signal_handlers() -> Iterator[None]:
    """Tune installs SIGINT/SIGUSR1 handlers for its run and leaves them installed afterwards:
    a later Ctrl+C (during the retrain) would then only set an event nobody reads."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def search_interrupted(grid: Any, num_samples: int) -> bool:
    """Did the search stop before every trial ended? (Tune returns normally on SIGINT/SIGUSR1.)

    Trials running at the interrupt come back TERMINATED in memory (saved as RUNNING, so a
    restore continues them): what tells them apart is that their last result is not `done`,
    which a trial stopped by the scheduler (ASHA, max_t) has. A trial that stops itself (XGBoost
    early stopping) gets `done` only with the result Tune adds when its function returns, which
    an interrupt right then (a restored search) loses: its own last report says `finished`.
    """
    if len(grid) < num_samples:
        return True
    return any(r.error is None and not _ended(r.metrics or {}) for r in grid)


def _ended(metrics: dict[str, Any]) -> bool:
    return bool(metrics.get("done") or metrics.get("finished"))


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


_SHORT = {
    "learning_rate": "lr",
    "min_child_weight": "min_child_w",
    "colsample_bytree": "colsample",
    "scale_pos_weight": "pos_weight",
    "best_round": "best_rnd",
    "rounds_run": "rounds",
}


def format_table(trials: pd.DataFrame, top_k: int = 5) -> str:
    """The first `top_k` rows (sort them best first) of a trials frame as a fixed-width table."""
    if trials.empty:
        return "(no trials)"

    def cell(value: Any) -> str:
        if value is None or is_nan(value):
            return "-"
        if isinstance(value, float | np.floating):
            return f"{value:.4g}" if abs(value) >= 1000 else f"{value:.4f}"
        return str(value)

    cols = list(trials.columns)
    rows = [[_SHORT.get(c, c) for c in cols]]
    rows += [[cell(r[c]) for c in cols] for r in trials.head(top_k).to_dict("records")]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows)


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
