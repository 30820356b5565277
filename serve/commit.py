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

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(
        self,
        write: Callable[[list[T]], None],
        shared: tuple[type[BaseException], ...] = (),
        max_rows: int = 512,
    ):
        self._write = write
        self._shared = shared
        self._max_rows = max_rows
        self._pending: list[tuple[list[T], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def commit(self, rows: Sequence[T]) -> None:
        """Commit `rows` (in one transaction, possibly with other callers' rows)."""
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # an error whose caller went away is not "unretrieved"
        self._pending.append((list(rows), future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        # shield: a caller that goes away (client disconnect) must not cancel others' writes
        await asyncio.shield(future)

    def _take(self) -> list[tuple[list[T], asyncio.Future]]:
        group, size = [], 0
        while self._pending and (not group or size + len(self._pending[0][0]) <= self._max_rows):
            entry = self._pending.pop(0)
            group.append(entry)
            size += len(entry[0])
        return group

    async def _drain(self) -> None:
        while self._pending:
            group = self._take()
            try:
                await asyncio.to_thread(self._write, [row for rows, _ in group for row in rows])
            except Exception as exc:
                if len(group) == 1 or isinstance(exc, self._shared):
                    for _, future in group:
                        _settle(future, exc)
                    continue
                for rows, future in group:  # find whose rows failed: each request alone
                    try:
                        await asyncio.to_thread(self._write, rows)
                    except Exception as own:
                        _settle(future, own)
                    else:
                        _settle(future, None)
            else:
                for _, future in group:
                    _settle(future, None)


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
