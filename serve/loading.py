"""Where the scorers get models: an injectable loader (the MLflow registry by default) and a
per-replica cache that loads each version once and keeps the newest few, so a switch never
unloads a model a request still uses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Protocol

from serve import metrics
from serve.settings import MODELS_KEPT

log = logging.getLogger("ray.serve")


class ModelLoader(Protocol):
    def resolve(self, name: str, ref: str) -> str: ...
    def tabular(self, name: str, version: str) -> Any: ...
    def note(self, name: str, version: str) -> Any: ...


class RegistryLoader:
    """Models from the MLflow registry (tracking URI from the environment or the data dir)."""

    def __init__(self, data_dir: str | None = None):
        from data.config import Settings
        from ml import registry

        settings = Settings.from_env()
        if data_dir:
            settings = settings.model_copy(update={"data_dir": Path(data_dir)})
        registry.configure(settings)

    def resolve(self, name: str, ref: str) -> str:
        """The version a reference names; a pinned number must be approved (aliases only ever
        point at approved versions: `approve`, `promote` and `rollback` move them)."""
        from ml import registry

        version = registry.resolve(name, ref)
        if str(ref).strip().isdigit():
            registry.check_exposable(name, version)
        return version

    # Never the pyfunc: that would unpickle (or run) code from the artifact store in every replica.
    # The predictor's own files are loaded once checked against the digest recorded at
    # registration; a refusal (ml.artifacts.UnsafeModel) fails this load, and says why.

    def tabular(self, name: str, version: str) -> Any:
        from ml import registry
        from ml.tabular import TabularPredictor

        return registry.load_verified(name, version, TabularPredictor.load)

    def note(self, name: str, version: str) -> Any:
        from ml import registry
        from ml.text import NotePredictor

        return registry.load_verified(name, version, NotePredictor.load)


class _ModelCache:
    """Versions loaded on demand (once, even under concurrent requests), the newest few kept.
    Each load (and its time, or its failure) is counted under the model's `name`."""

    def __init__(self, load, name: str = "model"):
        self._load = load
        self.name = name
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def get(self, version: str) -> Any:
        if version in self._models:
            self._models.move_to_end(version)
            return self._models[version]
        async with self._locks[version]:
            if version not in self._models:
                started = time.perf_counter()
                try:
                    model = await asyncio.to_thread(self._load, version)
                except Exception:
                    metrics.model_load(self.name, version, time.perf_counter() - started, ok=False)
                    raise
                seconds = time.perf_counter() - started
                metrics.model_load(self.name, version, seconds, ok=True)
                self._models[version] = model
                log.info("loaded %s version %s in %.1f s", self.name, version, seconds)
                while len(self._models) > MODELS_KEPT:
                    self._models.popitem(last=False)
        return self._models[version]
