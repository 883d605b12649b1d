"""A big batch commits on a second thread while ``charge --file`` reads on: its results are
still reported only once durable, a co-process still gets each batch's results before it
must send more, and a failed commit reports nothing and leaves nothing behind."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from smscredits import charging, ledger, pricing
from smscredits.charging import BULK_BATCH, Charger, ChargeRequest
from smscredits.errors import DatabaseError
from smscredits.storage.engine import open_db
from smscredits.storage.hot import driver_errors

ROOT = Path(__file__).resolve().parent.parent
TO = "+36301234567"
TIMEOUT = 60


def _line(i: int, user: str = "alice") -> str:
    return json.dumps({"user": user, "to": TO, "parts": 1, "id": f"m-{i}"})


@pytest.fixture
def accounts(db: Any) -> Any:
    pricing.set_price(db, "default", "1")
    for name in ("alice", "bob"):
        ledger.add_user(db, name)
        ledger.create_power(db, name, initial=1_000_000_000)  # a million credits
    return db


def _balance(db: Any, user: str = "alice") -> Decimal:
    return ledger.get_account(db, user).balance


def _read_lines(fd: int, count: int) -> list[dict[str, Any]]:
    """``count`` lines from a pipe, failing (not hanging) if they do not come. Read with
    ``os.read``: a buffered reader would hold lines that ``select`` then does not see."""
    data = b""
    while (got := data.count(b"\n")) < count:
        ready, _, _ = select.select([fd], [], [], TIMEOUT)
        if not ready:
            pytest.fail(f"only {got} of {count} result lines came")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            pytest.fail(f"output ended after {got} of {count} result lines")
        data += chunk
    assert data.count(b"\n") == count and data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def test_a_co_process_gets_a_big_batch_before_it_sends_more(accounts: Any,
                                                            db_url: str) -> None:
    env = dict(os.environ, SMSCREDITS_DB=db_url, SMSCREDITS_ACTOR="tester")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "smscredits", "charge", "--file", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        size = 2 * BULK_BATCH  # one write, read at once: a batch big enough to go behind
        for round_ in range(3):
            lines = [_line(round_ * size + i) for i in range(size)]
            proc.stdin.write("\n".join(lines) + "\n")
            proc.stdin.flush()
            got = _read_lines(proc.stdout.fileno(), size)  # before anything more is sent
            assert [r["id"] for r in got] == [f"m-{round_ * size + i}" for i in range(size)]
            assert {r["status"] for r in got} == {"charged"}
        proc.stdin.close()
        assert proc.wait(timeout=TIMEOUT) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _balance(accounts) == Decimal(1_000_000 - 3 * size)


def test_batches_begun_back_to_back_all_commit_in_order(accounts: Any) -> None:
    charger = Charger(accounts)
    first = charger.begin([ChargeRequest("alice", TO, parts=1, id=f"a-{i}")
                           for i in range(BULK_BATCH)])
    # The Charger takes no batch before the one committing is settled.
    second = charger.begin([ChargeRequest("alice", TO, parts=2, id=f"b-{i}")
                            for i in range(BULK_BATCH)])
    assert [r.balance for r in second.wait()][-1] == Decimal(1_000_000 - 3 * BULK_BATCH)
    assert first.wait() == first.results
    assert _balance(accounts) == Decimal(1_000_000 - 3 * BULK_BATCH)
    replayed = charger.charge(ChargeRequest("alice", TO, parts=1, id="a-0"))
    assert replayed.replayed and replayed.balance == Decimal(1_000_000 - 1)


def _failing_commit(self: Any, conn: Any, deferred: Any, on_durable: Any, started: Any) -> None:
    """The driver's commit failing as a full disk makes it fail."""
    started.set()
    try:
        with driver_errors(conn, "COMMIT"):
            raise conn.dialect.loaded_dbapi.OperationalError("disk I/O error")
    except BaseException as e:
        self._failure = e
    if on_durable is not None:
        on_durable()


def test_a_failed_background_commit_leaves_nothing_and_carries_nothing(
        accounts: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    charger = Charger(accounts)
    assert charger.charge(ChargeRequest("alice", TO, parts=1, id="before")).status == "charged"
    batch = [ChargeRequest("alice", TO, parts=1, id=f"lost-{i}") for i in range(BULK_BATCH)]
    with monkeypatch.context() as patch:
        patch.setattr(charging.Pending, "_driver_commit", _failing_commit)
        pending = charger.begin(batch)
        with pytest.raises(DatabaseError, match="disk I/O error"):
            pending.wait()
        with pytest.raises(DatabaseError):  # asked again, it still failed
            pending.wait()
    assert _balance(accounts) == Decimal(999_999)
    other = open_db(db_url, actor="admin")
    try:
        ledger.add_credits(other, "alice", 5_000)  # meanwhile, from elsewhere
    finally:
        other.dispose()
    # The next batch reads the account anew: not the balance the failed one had moved.
    again = charger.charge_batch(batch)
    assert [r.status for r in again] == ["charged"] * BULK_BATCH
    assert again[-1].balance == Decimal(1_000_000 - 1 + 5 - BULK_BATCH)
    assert _balance(accounts) == again[-1].balance


def test_charge_file_prints_no_line_of_a_batch_whose_commit_failed(
        cli: Any, accounts: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_text("".join(_line(i) + "\n" for i in range(3 * BULK_BATCH)))
    monkeypatch.setattr(charging.Pending, "_driver_commit", _failing_commit)
    run = cli("charge", "--file", str(feed))
    assert run.exit_code == 7, run.stderr
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and "disk I/O error" in run.stderr
    assert _balance(accounts) == Decimal(1_000_000)


def test_a_file_bigger_than_one_read_is_charged_in_full_batches(accounts: Any, cli: Any,
                                                                 tmp_path: Path) -> None:
    """3 000 lines of 450 bytes take two reads of the file (1 MiB each): the lines left over
    from the first wait for the second instead of making a short batch of their own. Each
    batch is one transaction with one instant, so the log shows one instant per batch."""
    from freezegun import freeze_time

    feed = tmp_path / "big.jsonl"
    feed.write_text("".join(_line(i)[:-1] + " " * 400 + "}\n" for i in range(3000)))
    assert feed.stat().st_size > 1 << 20
    # Later than the accounts' creation: a charge is never stamped before its account's
    # latest event.
    with freeze_time(datetime.now(UTC) + timedelta(days=1), auto_tick_seconds=1):
        run = cli("charge", "--file", str(feed))
    assert run.exit_code == 0
    assert "charged 3000" in run.stderr
    log = cli("--json", "log", "alice", "--kind", "message.charged", "--limit", "5000").json()
    assert len(log) == 3000
    assert sorted(Counter(row["at"] for row in log).values()) == [1000, 1000, 1000]


# On Postgres a batch runs whole on a thread of its own: test_serve_races covers its failures.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_service_answers_a_failed_commit_as_a_failure_and_goes_on(
        accounts: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve``'s group commit on SQLite commits each batch on the commit thread while the
    event loop goes on: a commit that fails there fails its requests, with nothing charged,
    and the next batch goes through."""
    import asyncio

    from smscredits.serve.group import GroupCommit

    async def run() -> None:
        group = GroupCommit(Charger(accounts))
        with monkeypatch.context() as patch:
            patch.setattr(charging.Pending, "_driver_commit", _failing_commit)
            lost = [ChargeRequest("alice", TO, parts=1, id=f"lost-{i}") for i in range(3)]
            answers = await asyncio.gather(*(group.run([r]) for r in lost),
                                           return_exceptions=True)
            assert all(isinstance(a, DatabaseError) for a in answers), answers
        assert _balance(accounts) == Decimal(1_000_000)
        again = await asyncio.gather(*(group.run([r]) for r in lost))
        assert [r.status for [r] in again] == ["charged"] * 3
        await group.close()

    asyncio.run(run())
    assert _balance(accounts) == Decimal(1_000_000 - 3)
