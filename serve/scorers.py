"""The model deployments, TabularScorer and NoteScorer (both batching concurrent requests by
arrival, serve/batching.py), and the Router's CombinedScorer over their handles. Thin async
plumbing: what they compute is serve/scoring.py; models come through serve/loading.py.

(No `from __future__ import annotations`: Serve inspects these signatures at deploy time.)
"""

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from ml.note_runtime import NoteRuntime
from serve import metrics
from serve.batching import ArrivalBatcher, BatchStats
from serve.loading import ModelLoader, RegistryLoader, _ModelCache
from serve.records import PatientRecord
from serve.scoring import Scored, TabularResult, combine, score_tabular
from serve.settings import NOTE_MODEL, TABULAR_MODEL, NoteBatchConfig, TabularBatchConfig

log = logging.getLogger("ray.serve")


def _threads() -> int:
    """Torch threads = the CPUs Ray gave this replica (at least 1)."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


class NoteFailure(Exception):
    """One note the note model could not score (returned by `NoteScorer.score` in that item's
    place, raised by the CombinedScorer for that request only). Carries the error's kind, never text."""


def _one_risk(predictor: Any, text: str) -> float | NoteFailure:
    try:
        return float(predictor.risk([text], 1)[0])
    except Exception as exc:
        return NoteFailure(f"note model failed on this note ({type(exc).__name__})")


@dataclass(frozen=True)
class TabularCall:
    """One request's records for the TabularScorer's batch."""

    records: list[PatientRecord]
    version: str
    top_k: int


def _score_calls(predictor: Any, calls: list[TabularCall]) -> list[list[TabularResult] | Exception]:
    """One `score_tabular` over the records of all `calls` (same version and top_k), split back
    per call. If the joint call fails, each call is scored alone, so a failure stays with the
    request that caused it."""
    records = [r for call in calls for r in call.records]
    try:
        results = score_tabular(predictor, records, calls[0].top_k)
    except Exception:
        if len(calls) == 1:
            raise
        return [_score_alone(predictor, call) for call in calls]
    out, start = [], 0
    for call in calls:
        out.append(results[start : start + len(call.records)])
        start += len(call.records)
    return out


def _score_alone(predictor: Any, call: TabularCall) -> list[TabularResult] | Exception:
    try:
        return score_tabular(predictor, call.records, call.top_k)
    except Exception as exc:
        return exc


# Defaults match serve/config.yaml (which overrides them): small CPU shares, so the whole
# graph fits a 2-CPU machine; the note scorer gets a full CPU for its forward passes.
@serve.deployment(ray_actor_options={"num_cpus": 0.25}, user_config=TabularBatchConfig().model_dump())
class TabularScorer:
    """The registered XGBoost model: calibrated risk and the top contributing features.
    Concurrent requests are scored in one call (serve/batching.py): its cost is mostly per call."""

    def __init__(
        self, model_name: str = TABULAR_MODEL, data_dir: str | None = None, loader: ModelLoader | None = None
    ):
        self.loader = loader or RegistryLoader(data_dir)
        self.model_name = model_name
        self.models = _ModelCache(lambda version: self.loader.tabular(model_name, version), model_name)
        self.batcher = ArrivalBatcher(self._batch, TabularBatchConfig().max_batch_size)

    def reconfigure(self, config: dict) -> None:
        self.batcher.max_items = TabularBatchConfig.model_validate(config or {}).max_batch_size

    async def warm(self, versions: list[str]) -> None:
        for version in versions:
            await self.models.get(version)

    async def batch_stats(self) -> BatchStats:
        """This replica's batches so far (bench/serve_load.py reports the mean batch size)."""
        return self.batcher.stats()

    async def score(
        self, records: list[PatientRecord], version: str, top_k: int = 5, variant: str | None = None
    ) -> list[TabularResult]:
        """`variant` only tags the `tabular` stage timing (model fetch, batch wait and scoring)."""
        with metrics.stage(variant, "tabular"):
            return await self.batcher.submit(TabularCall(list(records), version, top_k))

    async def _batch(self, calls: list[TabularCall]) -> list[list[TabularResult] | Exception]:
        """Calls grouped by (version, top_k), one scoring per group; a version that cannot load or
        a group that fails fails only its own calls (the exception, returned in their place, is
        raised to each of their callers by the batcher)."""
        out: list[list[TabularResult] | Exception] = [RuntimeError("not scored")] * len(calls)
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i, call in enumerate(calls):
            groups[(call.version, call.top_k)].append(i)
        for (version, _), rows in groups.items():
            try:
                predictor = await self.models.get(version)
            except Exception as exc:
                for i in rows:
                    out[i] = exc
                continue
            try:
                results = await asyncio.to_thread(_score_calls, predictor, [calls[i] for i in rows])
            except Exception as exc:  # a lone call that failed: only its group's callers see it
                results = [exc] * len(rows)
            for i, result in zip(rows, results, strict=True):
                out[i] = result
        return out


@serve.deployment(ray_actor_options={"num_cpus": 1}, user_config=NoteBatchConfig().model_dump())
class NoteScorer:
    """The registered note model; concurrent requests' notes are scored in one forward pass."""

    def __init__(
        self,
        model_name: str = NOTE_MODEL,
        data_dir: str | None = None,
        loader: ModelLoader | None = None,
        runtime: NoteRuntime = "torch",
    ):
        import torch
        import transformers

        threads = _threads()
        torch.set_num_threads(threads)
        # transformers imports lazily and not thread-safely: resolve the classes the loader
        # threads need here, once, before two loads can race.
        _ = transformers.AutoModelForSequenceClassification, transformers.AutoTokenizer
        self.loader = loader or RegistryLoader(data_dir)

        def load(version: str) -> Any:
            """The verified fp32 model, converted here to `runtime` (nothing else is loaded)."""
            predictor = self.loader.note(model_name, version)
            return predictor if runtime == "torch" else predictor.with_runtime(runtime, threads)

        self.models = _ModelCache(load, model_name)
        self.batcher = ArrivalBatcher(self._batch, NoteBatchConfig().max_batch_size)

    def reconfigure(self, config: dict) -> None:
        self.batcher.max_items = NoteBatchConfig.model_validate(config or {}).max_batch_size

    async def warm(self, versions: list[str]) -> None:
        for version in versions:
            await self.models.get(version)

    async def batch_stats(self) -> BatchStats:
        """This replica's batches so far (bench/serve_load.py reports the mean batch size)."""
        return self.batcher.stats()

    async def combiner(self, version: str) -> dict | None:
        """The tabular + note weights stored with this note model version, if any."""
        return (await self.models.get(version)).extra.get("combiner")

    async def score(self, item: tuple) -> float | NoteFailure:
        """(version, note text[, variant]) -> calibrated note risk, or the `NoteFailure` of that
        note. Notes that arrive while a forward pass runs go together in the next one
        (serve/batching.py)."""
        try:
            return await self.batcher.submit(item)
        except NoteFailure as failure:
            return failure

    async def _batch(self, items: list[tuple]) -> list[float | NoteFailure]:
        """One forward pass per version in the batch. Each item's variant gets the pass's time as
        its `note` stage.

        The batch holds other clients' requests: when a pass fails, its items are scored one by
        one, so only the item that fails gets a `NoteFailure` (the CombinedScorer raises it for that
        request alone) and a version that cannot load fails only its own items."""
        out: list[float | NoteFailure] = [NoteFailure("not scored")] * len(items)
        by_version: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_version[item[0]].append(i)
        for version, rows in by_version.items():
            started = time.perf_counter()
            try:
                predictor = await self.models.get(version)
            except Exception as exc:
                for i in rows:
                    out[i] = NoteFailure(f"note model version {version} not loaded ({type(exc).__name__})")
                continue
            texts = [items[i][1] for i in rows]
            try:
                risks = await asyncio.to_thread(predictor.risk, texts, len(texts))
            except Exception:
                risks = [await asyncio.to_thread(_one_risk, predictor, text) for text in texts]
            seconds = time.perf_counter() - started
            for i, r in zip(rows, risks, strict=True):
                out[i] = r if isinstance(r, NoteFailure) else float(r)
                metrics.stage_done(items[i][2] if len(items[i]) > 2 else None, "note", seconds)
        return out


class CombinedScorer:
    """One risk per record from both scorers, with the weights stored with the note model.

    Runs in the Router's process, not as a deployment of its own: a Combiner deployment between
    the Router and the scorers cost every request one more hop (its records serialized once
    more, note text included) for a combination that takes microseconds."""

    def __init__(self, tabular: DeploymentHandle, note: DeploymentHandle):
        self.tabular = tabular
        self.note = note
        self.weights: dict[str, Any] = {}

    async def _weights(self, note_version: str):
        from ml.combine import RiskCombiner

        if note_version not in self.weights:
            stored = await self.note.combiner.remote(note_version)
            self.weights[note_version] = RiskCombiner(**stored) if stored else RiskCombiner()
        return self.weights[note_version]

    async def score(
        self,
        records: list[PatientRecord],
        versions: dict[str, str | None],
        top_k: int = 5,
        variant: str | None = None,
    ) -> list[Scored]:
        """`variant` only tags the stage timings (tabular, note, combine)."""
        tabular = self.tabular.score.remote(records, versions["tabular"], top_k, variant)
        texts = [r.note_text() for r in records]
        note_version = versions.get("note")
        note_calls = (
            [self.note.score.remote((note_version, t, variant)) for t in texts if t] if note_version else []
        )
        combiner = await self._weights(note_version) if note_calls else None
        risks = await asyncio.gather(*note_calls)
        for risk in risks:
            if isinstance(risk, NoteFailure):
                raise risk
        note_risks = iter(risks)
        results = await tabular
        with metrics.stage(variant, "combine"):
            return [
                combine(result, next(note_risks) if text and note_calls else None, combiner)
                for result, text in zip(results, texts, strict=True)
            ]
