"""Group commit: rows from concurrent requests written in one transaction.

Each request's rows used to be one transaction of their own; on SQLite that is one fsync and one
turn at the database's single write lock per request. Here, while a write is in progress, the
rows of every request that arrives queue up, and the next write takes them all. No timer: a lone
request is written at once, and the group grows only with the load.

A caller's `await commit(rows)` returns only once its rows are committed ("a 200 means
committed" holds), and raises the error of its own rows: when the joint write fails, each
request's rows are written alone, so one request's duplicate id fails that request only. Errors
that are the database's, not a row's (`shared`, e.g. the store being down), go to every caller
of the group at once instead of being retried per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from serve.batching import ArrivalBatcher

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """`await commit(rows)`: written in one transaction with the rows of every request that
    arrived while the last transaction ran (serve/batching.py), at most `max_rows` rows each."""

    def __init__(
        self,
        write: Callable[[list[T]], None],
        shared: tuple[type[BaseException], ...] = (),
        max_rows: int = 512,
    ):
        self._write = write
        self._shared = shared
        self._batcher: ArrivalBatcher[list[T], None] = ArrivalBatcher(self._write_group, max_rows, size=len)

    async def commit(self, rows: Sequence[T]) -> None:
        """Commit `rows` (in one transaction, possibly with other callers' rows)."""
        await self._batcher.submit(list(rows))

    async def _write_group(self, group: list[list[T]]) -> list[None | Exception]:
        try:
            await asyncio.to_thread(self._write, [row for rows in group for row in rows])
        except Exception as exc:
            if len(group) == 1 or isinstance(exc, self._shared):
                return [exc] * len(group)
            return [await self._write_alone(rows) for rows in group]  # whose rows failed?
        return [None] * len(group)

    async def _write_alone(self, rows: list[T]) -> None | Exception:
        try:
            await asyncio.to_thread(self._write, rows)
        except Exception as own:
            return own
        return None
