"""Group commit: the requests that arrive while a transaction commits are charged together in
the next one.

A request hands its messages to ``GroupCommit.run`` and waits. The first to find no batch
under way starts one, which runs as soon as the event loop has let every request already
read do the same: it takes them all, in order of arrival, through ``Charger.begin`` — the
path of ``charge --file`` — and a lone request waits for no timer. On SQLite the batch is
charged in the event loop's own thread (a charging thread beside the loop was a third
slower: the two traded the interpreter's lock at every call into SQLite), and only its
commit, which waits on the disk and needs no Python, runs on the charger's commit thread
while the loop reads the next requests. On Postgres a batch mostly waits on the server, so
it runs whole on a thread of its own.
Each request gets back exactly its own results, once the transaction that made them has
committed. A batch that fails for a reason other than the database (a message
no check foresaw) is redone one request at a time, so one request cannot fail the others; a
database failure fails the batch's requests (each may be resent: its id makes it a replay if
it did commit) and the next batch takes a new connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError

from smscredits.charging import Charger, ChargeResult
from smscredits.charging.model import ChargeRequest, MessageOp
from smscredits.errors import DatabaseError

Item = ChargeRequest | MessageOp
# A batch takes queued requests up to this many messages (a bigger request goes alone).
GROUP_MAX = 5000
T = TypeVar("T")


@dataclass(slots=True)
class _Waiting:
    items: list[Item]
    done: asyncio.Future[list[ChargeResult]]


class GroupCommit:
    """Charges the messages of concurrent requests in shared transactions."""

    def __init__(self, charger: Charger,
                 observe: Callable[[int, float], None] | None = None) -> None:
        self._charger = charger
        self._observe = observe  # hears each batch's size and its seconds
        self._queue: list[_Waiting] = []
        self._draining: asyncio.Task[None] | None = None
        self._thread = (None if charger.db.is_sqlite
                        else ThreadPoolExecutor(1, thread_name_prefix="smscredits-charge"))

    async def run(self, items: list[Item]) -> list[ChargeResult]:
        """The results of ``items``, in order, once committed."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(items, loop.create_future())
        self._queue.append(waiting)
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        # A request cancelled meanwhile (the server stopping) cancels only its wait: its
        # messages are in the queue, and go in a batch all the same.
        return await waiting.done

    async def _drain(self) -> None:
        try:
            while self._queue:
                group = self._take()
                await self._commit(group)
        finally:
            self._draining = None

    def _take(self) -> list[_Waiting]:
        size, taken = 0, 0
        for waiting in self._queue:
            if taken and size + len(waiting.items) > GROUP_MAX:
                break
            size += len(waiting.items)
            taken += 1
        group, self._queue = self._queue[:taken], self._queue[taken:]
        return group

    async def _commit(self, group: list[_Waiting]) -> None:
        items = [item for waiting in group for item in waiting.items]
        try:
            results = await self._charge(items)
        except Exception as e:
            # The connection may be the cause (a server restarted, a backend terminated):
            # the next batch takes a new one.
            await self._call(self._charger.release)
            if isinstance(e, DatabaseError | DBAPIError) or len(group) == 1:
                for waiting in group:
                    _answer(waiting, e)
                return
            for waiting in group:  # find the one request that fails; the others go through
                await self._commit([waiting])
            return
        start = 0
        for waiting in group:
            _answer(waiting, results[start:start + len(waiting.items)])
            start += len(waiting.items)

    async def _charge(self, items: list[Item]) -> list[ChargeResult]:
        began = time.perf_counter()
        if self._thread is None:
            results = await self._commit_behind(items)
        else:
            results = await self._call(self._charger.charge_batch, items)
        if self._observe is not None:
            self._observe(len(items), time.perf_counter() - began)
        return results

    async def _commit_behind(self, items: list[Item]) -> list[ChargeResult]:
        """SQLite's batch, charged in this thread; its commit, which waits on the disk, on
        the charger's commit thread, while the loop reads the next requests."""
        loop = asyncio.get_running_loop()
        durable: asyncio.Future[None] = loop.create_future()

        def on_durable() -> None:  # in the commit thread
            loop.call_soon_threadsafe(_settle, durable)

        pending = self._charger.begin(items, on_durable=on_durable)
        if pending.committing:
            await durable
        return pending.wait()

    async def close(self) -> None:
        """Let the queued requests commit, then give back the connection."""
        while self._draining is not None:
            await asyncio.shield(self._draining)
        await self._call(self._charger.close)
        if self._thread is not None:
            self._thread.shutdown()

    async def _call(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` where the Charger lives: on its thread, or here."""
        if self._thread is None:
            return work(*args)
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _answer(waiting: _Waiting, outcome: list[ChargeResult] | BaseException) -> None:
    if waiting.done.done():
        return
    if isinstance(outcome, BaseException):
        waiting.done.set_exception(outcome)
    else:
        waiting.done.set_result(outcome)
