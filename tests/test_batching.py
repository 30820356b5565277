"""serve/batching.py: items that arrive while a batch runs go together in the next batch; a lone
item runs at once; an item's own error fails only its caller."""

from __future__ import annotations

import asyncio

import pytest

from serve.batching import ArrivalBatcher, BatchStats


class Doubler:
    def __init__(self, delay_s: float = 0.05):
        self.calls: list[list[int]] = []
        self.delay_s = delay_s

    async def __call__(self, items: list[int]) -> list[int | Exception]:
        self.calls.append(list(items))
        await asyncio.sleep(self.delay_s)  # the scorer's thread
        return [ValueError(f"item {i} is bad") if i < 0 else 2 * i for i in items]


def test_items_arriving_during_a_batch_form_the_next_one() -> None:
    run = Doubler()
    batcher = ArrivalBatcher(run, max_items=32)

    async def go() -> list[int]:
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)  # the first batch is running
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 21)]
        return [await first] + [await t for t in rest]

    assert asyncio.run(go()) == [2 * i for i in range(21)]
    assert run.calls == [[0], list(range(1, 21))]
    assert batcher.stats() == BatchStats(batches=2, items=21)


def test_a_lone_item_runs_at_once_without_waiting_for_company() -> None:
    run = Doubler(delay_s=0.0)
    batcher = ArrivalBatcher(run)

    async def go() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await batcher.submit(3) == 6
        return loop.time() - started

    assert asyncio.run(go()) < 0.05
    assert run.calls == [[3]]


def test_an_items_error_fails_its_caller_only() -> None:
    run = Doubler()
    batcher = ArrivalBatcher(run)

    async def go() -> list[object]:
        tasks = [asyncio.create_task(batcher.submit(i)) for i in (1, -1, 2)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    ok1, bad, ok2 = asyncio.run(go())
    assert (ok1, ok2) == (2, 4)
    assert isinstance(bad, ValueError) and str(bad) == "item -1 is bad"
    assert run.calls == [[1, -1, 2]]


def test_a_failed_batch_fails_its_items_and_the_next_batch_still_runs() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int | Exception]:
        calls.append(list(items))
        await asyncio.sleep(0.02)
        if 99 in items:
            raise RuntimeError("scorer crashed")
        return items

    batcher = ArrivalBatcher(run)

    async def go() -> list[object]:
        first = asyncio.create_task(batcher.submit(99))
        await asyncio.sleep(0.005)
        later = asyncio.create_task(batcher.submit(7))
        return await asyncio.gather(first, later, return_exceptions=True)

    crashed, fine = asyncio.run(go())
    assert isinstance(crashed, RuntimeError) and "scorer crashed" in str(crashed)
    assert fine == 7
    assert calls == [[99], [7]]


def test_batches_are_capped_at_max_items_and_the_cap_is_hot() -> None:
    run = Doubler(delay_s=0.01)
    batcher = ArrivalBatcher(run, max_items=4)

    async def go(n: int) -> None:
        await asyncio.gather(*(batcher.submit(i) for i in range(n)))

    asyncio.run(go(10))
    assert [len(c) for c in run.calls] == [4, 4, 2]
    batcher.max_items = 8  # what `reconfigure` does
    run.calls.clear()
    asyncio.run(go(10))
    assert [len(c) for c in run.calls] == [8, 2]


def test_a_wrong_result_count_fails_the_batch_not_the_batcher() -> None:
    async def short(items: list[int]) -> list[int | Exception]:
        return items[:-1]

    batcher = ArrivalBatcher(short)

    async def go() -> list[object]:
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)

    results = asyncio.run(go())
    assert all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError, match="batch of 3 gave 2 results"):
        raise results[0]  # type: ignore[misc]


class _AgeCheckingPredictor:
    """Enough of TabularPredictor for `score_tabular` (no factors): fails on any frame holding
    an age of 89, as a model would on input it cannot take."""

    feature_names = ["age"]

    def score(self, frame, contributions: bool = True):
        import numpy as np

        if (frame["age"] == 89).any():
            raise ValueError("cannot score this frame")
        return np.full(len(frame), 0.2), None


def test_a_tabular_batch_that_fails_is_rescored_per_request() -> None:
    """serve/scorers.py `_score_calls`: the requests batched with a failing one still get their
    answers, in their order; only the failing request gets the error."""
    from data.record import PatientRecord
    from serve.scorers import TabularCall, _score_calls

    def call(*ages: int) -> TabularCall:
        return TabularCall([PatientRecord(age=a) for a in ages], "1", 0)

    results = _score_calls(_AgeCheckingPredictor(), [call(60, 70), call(89), call(80)])
    assert [len(r) for r in results[::2]] == [2, 1]
    assert all(r.risk == 0.2 for r in results[0] + results[2])
    assert [r.features["age"] for r in results[0]] == [60, 70]
    assert isinstance(results[1], ValueError) and "cannot score this frame" in str(results[1])
    with pytest.raises(ValueError, match="cannot score this frame"):  # alone, it raises
        _score_calls(_AgeCheckingPredictor(), [call(89)])
