"""``verify``: one consistent snapshot of a live ledger, and every money-deciding state
(balance, windows, overdraft, limits, disabled flag, plan status, message status) checked
against the journal, so that a direct edit of the database is found. Both engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, text

from smscredits import ledger, limits, pricing
from smscredits.charging import Charger, ChargeRequest
from smscredits.storage.engine import Db, open_db
from smscredits.verify import verify

TO = "+36301234567"


@pytest.fixture
def alice(db: Db) -> Db:
    """alice, Budapest time, 1000 credits, a daily limit of 500; a message costs 1."""
    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "alice", tz="Europe/Budapest")
    ledger.create_power(db, "alice", initial=1_000_000)
    limits.set_limits(db, "alice", {"day": 500_000})
    Charger(db).charge(ChargeRequest("alice", TO, parts=1, id="m-0"))
    return db


@pytest.fixture
def other(db_url: str) -> Iterator[Db]:
    """A second handle on the same database: another process's connections."""
    handle = open_db(db_url, actor="gateway")
    yield handle
    handle.dispose()


def _sql(db: Db, sql: str, **params: Any) -> None:
    with db.write() as conn:
        conn.execute(text(sql), params)


def _problems(db: Db) -> list[tuple[str, str, str]]:
    return [(p.check, p.user, p.detail) for p in verify(db).problems]


# -- item 4: one snapshot --------------------------------------------------------------------


def test_verify_reads_one_snapshot_while_charges_commit(alice: Db, other: Db) -> None:
    """A charge (its message, event, balance, window counters and chain head) commits
    between every two of verify's statements: verify sees none of them and finds nothing
    wrong (was, on Postgres: balance differs, latest events missing)."""
    charger = Charger(other)
    charged: list[str] = []

    def commit_a_charge(*_: Any) -> None:
        result = charger.charge(ChargeRequest("alice", TO, parts=1, id=f"live-{len(charged)}"))
        assert result.status == "charged"
        charged.append(result.id or "")

    event.listen(alice.engine, "after_execute", commit_a_charge)
    try:
        report = verify(alice)
    finally:
        event.remove(alice.engine, "after_execute", commit_a_charge)
        charger.close()
    assert len(charged) >= 3  # the charges really came between verify's statements
    assert report.problems == []
    assert report.ok
    # What verify saw: the ledger as it was when it started (3 events + the first charge).
    assert report.events == 5
    assert verify(alice).ok  # and the ledger with every charge in it verifies too
