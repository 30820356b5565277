"""Batching by arrival: the items of concurrent requests scored in one call.

Why not `@serve.batch` for the tabular scorer: in Ray 2.60 it forms the next batch as soon as the
wait timeout passes, while the previous batch still runs, and the formed batches then queue for
their turn (ray/serve/batching.py `_process_batches`). Under load that gives batches of 1-2
records (measured in bench/serve_load.py at concurrency 32: 1.4 requests per batch) when a call's
cost is mostly fixed. Here the next batch is formed only when the previous call is done, from
everything that arrived meanwhile: no timer, so a lone request runs at once, and a batch grows
with the load (up to `max_items`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchStats:
    batches: int
    items: int


class ArrivalBatcher(Generic[T, R]):
    """`await submit(item)` -> `run`'s result for that item; `run(items)` returns one result per
    item, an Exception in an item's place failing that item's caller only."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R | Exception]]],
        max_items: int = 32,
        size: Callable[[T], int] = lambda item: 1,
    ):
        self._run = run
        self.max_items = max_items  # a batch's total `size` (but at least one item)
        self._size = size
        self._pending: list[tuple[T, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.batches = 0  # counters for tests and metrics
        self.items = 0

    def stats(self) -> BatchStats:
        return BatchStats(self.batches, self.items)

    async def submit(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # an error whose caller went away is not "unretrieved"
        self._pending.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        result = await asyncio.shield(future)  # a caller that goes away leaves the batch alone
        return result

    def _take(self) -> list[tuple[T, asyncio.Future]]:
        group, total = [], 0
        while self._pending and (not group or total + self._size(self._pending[0][0]) <= self.max_items):
            entry = self._pending.pop(0)
            group.append(entry)
            total += self._size(entry[0])
        return group

    async def _drain(self) -> None:
        while self._pending:
            group = self._take()
            self.batches += 1
            self.items += len(group)
            try:
                results = await self._run([item for item, _ in group])
                if len(results) != len(group):
                    raise RuntimeError(f"batch of {len(group)} gave {len(results)} results")
            except Exception as exc:  # the whole call failed: every item of it fails
                results = [exc] * len(group)
            for (_, future), result in zip(group, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
