"""The ``Charger``: transactions, retries and the commit thread around ``Batch``; the
Python API that gateway code keeps and calls."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

from sqlalchemy import (
    Connection,
    exc,
)

from smscredits import clock
from smscredits.charging.batch import Batch, Carried
from smscredits.charging.model import (
    BULK_BATCH,
    ChargeRequest,
    ChargeResult,
    MessageOp,
    fit_to_look_up,
)
from smscredits.errors import DatabaseError
from smscredits.pricing import PriceBook
from smscredits.storage.charge_sql import due_holds
from smscredits.storage.engine import (
    BULK_CHECKPOINT_PAGES,
    CHECKPOINT_PAGES,
    Db,
    set_checkpoint_pages,
)
from smscredits.storage.hot import (
    driver_errors,
)
from smscredits.validate import is_message_id


class Pending:
    """A charged batch whose transaction is committing (``Charger.begin``)."""

    def __init__(self, charger: Charger, conn: Connection, results: list[ChargeResult],
                 kept: Carried | None, recall: bool, commit: ExitStack,
                 background: Executor | None, deferred: list[Callable[[], None]],
                 on_durable: Callable[[], None] | None) -> None:
        # ``deferred`` (statements left to run before the commit) comes with ``background``.
        self._charger, self._results, self._kept, self._recall = charger, results, kept, recall
        self._commit = commit
        self._failure: BaseException | None = None
        self._thread: Future[None] | None = None
        if background is not None:
            # Only the driver's commit runs on the thread: it holds no lock Python needs
            # while it waits on the disk or the server. SQLAlchemy's own bookkeeping (a
            # commit that finds nothing left to do, the connection's return to its pool)
            # stays in the caller's thread, so the two threads do not trade Python's lock.
            started = threading.Event()
            self._thread = background.submit(self._driver_commit, conn, deferred, on_durable,
                                             started)
            # Handed over now: a caller that goes on keeps Python's lock until the switch
            # interval (5 ms) takes it away, and the commit would wait that long to start.
            # Waiting here lets the thread take the lock at once, and it gives the lock back
            # as soon as it waits on the disk or the server (serve's single charges: +11 %).
            started.wait()

    def _driver_commit(self, conn: Connection, deferred: list[Callable[[], None]],
                       on_durable: Callable[[], None] | None, started: threading.Event) -> None:
        started.set()
        try:
            for run in deferred:  # statements left to the end, all of them server work
                run()
            with driver_errors(conn, "COMMIT"):
                conn.connection.dbapi_connection.commit()  # type: ignore[union-attr]
        except BaseException as e:  # raised by wait(), in the caller's thread
            self._failure = e
        if on_durable is not None:
            on_durable()

    def discard(self) -> None:
        """Let the batch go unwaited: its commit thread is joined (a commit it ran stands)
        and the transaction left is rolled back."""
        if self._thread is not None:
            self._thread.result()
            self._thread = None
        with contextlib.suppress(Exception):
            self._commit.__exit__(RuntimeError, RuntimeError("discarded"), None)

    @property
    def committing(self) -> bool:
        """Whether the commit runs on the commit thread (which calls ``on_durable``)."""
        return self._thread is not None

    @property
    def results(self) -> list[ChargeResult]:
        """The results as they will be once committed: not to be reported before ``wait``."""
        return self._results

    def wait(self) -> list[ChargeResult]:
        """The batch's results, once committed; its commit's error, if it failed."""
        if self._thread is not None:
            self._thread.result()
            self._thread = None
        charger = self._charger
        if charger._pending is self:
            charger._pending = None  # settled, whatever happens: a failure carries nothing
            try:
                if self._failure is None:
                    self._commit.close()  # commits what is left, returns the connection
                else:  # rolls back; Db.write words a database error itself
                    self._commit.__exit__(type(self._failure), self._failure,
                                          self._failure.__traceback__)
                    raise self._failure
            except BaseException as e:
                self._failure = e
                raise
            charger._carried, charger._recall = self._kept, self._recall
        if self._failure is not None:
            raise self._failure
        return self._results


class Charger:
    """Charges messages against one database; gateway code keeps one and calls it."""

    def __init__(self, db: Db) -> None:
        self.db = db
        self._carried: Carried | None = None
        # Whether to look up a batch's message ids before charging it. Ids are new in a
        # healthy stream, so by default a batch does not: an id recorded before fails its
        # insert, and the batch is redone with the lookup (as is the next batch).
        self._recall = False
        self._checkpoint_pages = CHECKPOINT_PAGES  # SQLite's, until batches are big
        self._pending: Pending | None = None
        self._committer: ThreadPoolExecutor | None = None  # the thread of ``begin``'s commits
        # An in-memory SQLite database lives in its one connection, which stays in its thread.
        self._background = not (db.is_sqlite and db.engine.url.database in (None, "", ":memory:"))
        # Kept from batch to batch: taking a connection from the pool and handing it back
        # (with the pool's reset) costs a fifth of a one-message charge on SQLite.
        self._conn: Connection | None = None
        self._book: PriceBook | None = None  # the last batch's prices

    def __enter__(self) -> Charger:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.close()
        else:  # a batch not waited for is not to be committed now: it is rolled back
            self.release()

    def close(self) -> None:
        """Wait for a batch still committing (raising its error), then give back the
        connection. The Charger can be used again; it takes a new one."""
        try:
            self.finish()
        finally:
            self.release()
            committer, self._committer = self._committer, None
            if committer is not None:
                committer.shutdown()

    def release(self) -> None:
        """Give back the connection without waiting: a batch in flight is rolled back,
        unless its commit has already run."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.discard()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self.db.engine.connect()
        return self._conn

    def charge(self, req: ChargeRequest) -> ChargeResult:
        return self.charge_batch([req])[0]

    def hold(self, req: ChargeRequest) -> ChargeResult:
        """Hold a message's cost until ``settle``, ``void``, a report or expiry (``holds``)."""
        req.hold = True
        return self.charge_batch([req])[0]

    def settle(self, msg_id: str, *, parts: int | None = None,
               user: str | None = None) -> ChargeResult:
        """Make a hold final, at ``parts`` if the SMSC sent another number of them."""
        return self.charge_batch([MessageOp("settle", msg_id, user=user, parts=parts)])[0]

    def void(self, msg_id: str, *, note: str | None = None,
             user: str | None = None) -> ChargeResult:
        """Release a hold (a settled message's void is a refund: ``void_settled``)."""
        return self.charge_batch([MessageOp("void", msg_id, user=user, note=note)])[0]

    def dlr(self, msg_id: str, status: str, source: str = "smpp") -> ChargeResult:
        """A delivery report: settles, voids or leaves the hold by ``holds.dlr_action``."""
        return self.charge_batch([MessageOp("dlr", msg_id, status=status, source=source)])[0]

    def refund(self, msg_id: str, *, note: str | None = None) -> ChargeResult:
        return self.charge_batch([MessageOp("refund", msg_id, note=note)])[0]

    def expire(self, *, batch: int = 1000, before: int | None = None) -> list[ChargeResult]:
        """Settle or void (``hold_expiry``) every hold past its expiry (and with ``before``
        every hold made before that instant, µs), ``batch`` at a time, each batch one
        transaction; the results of those it ended."""
        ended: list[ChargeResult] = []
        after = ""
        while True:
            with self.db.read() as conn:
                due = due_holds(conn, clock.now_us(), batch, before, after)
            if not due:
                return ended
            after = due[-1]  # one pass: a hold that cannot end (its power deleted) is passed
            results = self.charge_batch([MessageOp("expire", i, before=before) for i in due])
            ended += [r for r in results if r.status in ("settled", "voided")]

    def charge_batch(self, reqs: Iterable[ChargeRequest | MessageOp]) -> list[ChargeResult]:
        """Charge several messages in one transaction (all results durable on return)."""
        return self.begin(reqs, background=False).wait()

    def begin(self, reqs: Iterable[ChargeRequest | MessageOp], *,
              background: bool = True,
              on_durable: Callable[[], None] | None = None) -> Pending:
        """Charge several messages in one transaction and start its commit; ``wait()`` on
        the result for the results, durable. Until then they are not to be reported.

        With ``background`` a big batch commits on a second thread: the commit waits on the
        disk or the server and needs no Python, so the caller can meanwhile read its next
        lines and format these results. With ``on_durable`` every batch does, and that
        thread calls it once the commit has ended (then ``wait`` does not block): an event
        loop serves its other requests meanwhile. The Charger takes no other batch before
        ``wait``.
        """
        self.finish()
        reqs = list(reqs)
        behind = (background and self._background
                  and (on_durable is not None or len(reqs) >= BULK_BATCH))
        for attempt in range(5):
            carried, self._carried = self._carried, None  # a failed batch carries nothing
            try:
                # On Postgres the power rows' UPDATE, all server work, goes behind too.
                deferred: list[Callable[[], None]] = []
                with ExitStack() as held:
                    conn = held.enter_context(self.db.transaction(self._connection()))
                    if self.db.is_sqlite:
                        self._checkpoints_for(conn, len(reqs))
                    batch = Batch(conn, self.db, self._still_true(conn, carried), self._book)
                    self._book = batch.book
                    try:
                        charges = [r for r in reqs if type(r) is ChargeRequest]
                        acts = [r for r in reqs if type(r) is MessageOp]
                        batch.prefetch(fit_to_look_up(charges), recall=self._recall,
                                       acts=[a for a in acts
                                             if type(a.id) is str and is_message_id(a.id)])
                        batch.stamp()
                        results = batch.charge_all(reqs)
                        batch.flush(deferred if behind and batch.postgres else None)
                    except BaseException as e:
                        batch.abort(e)
                        raise
                    kept = self._kept(conn, batch)
                    commit = held.pop_all()  # the transaction outlives this block
            except exc.IntegrityError:
                # One of these message ids was recorded before (unlooked-up, or by another
                # process meanwhile): redo the batch, recalling, so it replays that result.
                self._recall = True
                if attempt == 4:
                    raise
                continue
            except DatabaseError as e:
                # Rolled back whole before its commit (a deadlock with a batch inserting the
                # same new ids in another order, a kept connection the server dropped): redo
                # it, on a new connection.
                if not e.transient or attempt == 4:
                    raise
                self.release()
                self._recall = True
                continue
            self._pending = Pending(self, conn, results, kept, batch.replays > 0, commit,
                                    self._commit_thread() if behind else None, deferred,
                                    on_durable)
            return self._pending
        raise AssertionError("unreachable")  # pragma: no cover

    def _commit_thread(self) -> ThreadPoolExecutor:
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="smscredits-commit")
        return self._committer

    def finish(self) -> None:
        """Wait for a batch still committing (``begin``), if any; raise if its commit failed."""
        if self._pending is not None:
            self._pending.wait()

    def _checkpoints_for(self, conn: Connection, size: int) -> None:
        pages = BULK_CHECKPOINT_PAGES if size >= BULK_BATCH else CHECKPOINT_PAGES
        if pages != self._checkpoint_pages:
            set_checkpoint_pages(conn, pages)
            self._checkpoint_pages = pages

    @staticmethod
    def _still_true(conn: Connection, carried: Carried | None) -> Carried | None:
        dbapi = conn.connection.dbapi_connection
        return carried if carried is not None and carried.still_true(dbapi) else None

    @staticmethod
    def _kept(conn: Connection, batch: Batch) -> Carried | None:
        if batch.postgres:  # rows are locked and read anew by each transaction
            return None
        dbapi: Any = conn.connection.dbapi_connection
        return Carried(dbapi, Carried.version_of(dbapi), dbapi.total_changes, batch.accounts,
                       batch.powers, batch.owners)


