"""serve/commit.py: concurrent requests' rows committed together, each caller answered only
after its own rows are committed, and only its own rows' error raised."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serve.commit import GroupCommit


class Table:
    """A write function with a transaction's all-or-nothing behaviour and a duplicate check."""

    def __init__(self, delay_s: float = 0.05, down: bool = False):
        self.rows: list[str] = []
        self.writes: list[list[str]] = []
        self.delay_s = delay_s
        self.down = down
        self.lock = threading.Lock()

    def write(self, rows: list[str]) -> None:
        time.sleep(self.delay_s)  # a transaction's time, in the writer thread
        with self.lock:
            self.writes.append(list(rows))
            if self.down:
                raise ConnectionError("store down")
            taken = set(self.rows)
            if len(set(rows)) < len(rows) or taken & set(rows):
                raise KeyError("duplicate request id")
            self.rows.extend(rows)


async def _commit_all(commits: GroupCommit, groups: list[list[str]]) -> list[BaseException | None]:
    async def one(rows: list[str]) -> BaseException | None:
        try:
            await commits.commit(rows)
        except Exception as exc:
            return exc
        return None

    return await asyncio.gather(*(one(rows) for rows in groups))


def test_concurrent_callers_share_transactions_and_return_only_once_committed() -> None:
    table = Table()
    commits = GroupCommit(table.write)

    async def run() -> list[bool]:
        committed = []

        async def one(i: int) -> None:
            await commits.commit([f"r{i}a", f"r{i}b"])
            committed.append(f"r{i}a" in table.rows and f"r{i}b" in table.rows)

        await asyncio.gather(*(one(i) for i in range(40)))
        return committed

    committed = asyncio.run(run())
    assert committed == [True] * 40  # no caller returned before its rows were in
    assert sorted(table.rows) == sorted(f"r{i}{s}" for i in range(40) for s in "ab")
    # all 40 queued before the writer task first ran: one transaction for the 80 rows
    assert [len(w) for w in table.writes] == [80]


def test_a_lone_caller_is_written_at_once() -> None:
    table = Table(delay_s=0.0)
    commits = GroupCommit(table.write)

    async def run() -> None:
        for i in range(3):
            await commits.commit([f"r{i}"])

    asyncio.run(run())
    assert table.writes == [["r0"], ["r1"], ["r2"]]


def test_a_duplicate_fails_only_its_own_caller() -> None:
    table = Table()
    table.rows.append("taken")
    commits = GroupCommit(table.write)

    async def run() -> list[BaseException | None]:
        first = asyncio.create_task(commits.commit(["warm-up"]))  # keeps the writer busy
        await asyncio.sleep(0)
        results = await _commit_all(commits, [["a"], ["taken"], ["b", "c"]])
        await first
        return results

    results = asyncio.run(run())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], KeyError) and "duplicate request id" in str(results[1])
    assert sorted(table.rows) == ["a", "b", "c", "taken", "warm-up"]


def test_a_store_outage_reaches_every_caller_without_a_retry_each() -> None:
    table = Table(down=True)
    commits = GroupCommit(table.write, shared=(ConnectionError,))

    async def run() -> list[BaseException | None]:
        first = asyncio.create_task(commits.commit(["w"]))
        await asyncio.sleep(0)
        results = await _commit_all(commits, [["a"], ["b"], ["c"]])
        with pytest.raises(ConnectionError, match="store down"):
            await first
        return results

    results = asyncio.run(run())
    assert all(isinstance(r, ConnectionError) for r in results)
    assert [len(w) for w in table.writes] == [1, 3]  # the group of three tried once, together
    assert table.rows == []


def test_a_caller_that_goes_away_does_not_cancel_the_others_write() -> None:
    table = Table(delay_s=0.1)
    commits = GroupCommit(table.write)

    async def run() -> None:
        gone = asyncio.create_task(commits.commit(["gone"]))
        stays = asyncio.create_task(commits.commit(["stays"]))
        await asyncio.sleep(0.02)
        gone.cancel()
        await stays
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(run())
    assert sorted(table.rows) == ["gone", "stays"]  # the write had begun: it is committed


def test_groups_are_capped_at_max_rows() -> None:
    table = Table()
    commits = GroupCommit(table.write, max_rows=5)

    async def run() -> None:
        await asyncio.gather(*(commits.commit([f"r{i}a", f"r{i}b"]) for i in range(6)))

    asyncio.run(run())
    assert [len(w) for w in table.writes] == [4, 4, 4]  # a caller's rows are never split
    assert len(table.rows) == 12
