"""A Charger keeps one connection from batch to batch and gives it back when closed: what a
gateway holding a Charger, and another process beside it, see."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from smscredits import ledger, pricing
from smscredits.charging import BULK_BATCH, Charger, ChargeRequest
from smscredits.storage.engine import open_db

TO = "+36301234567"


@pytest.fixture
def alice(db: Any) -> Any:
    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=1_000_000_000)  # a million credits
    return db


def _balance(db_url: str) -> Decimal:
    other = open_db(db_url, actor="admin")  # another process's view
    try:
        return ledger.get_account(other, "alice").balance
    finally:
        other.dispose()


def _batch(tag: str, n: int) -> list[ChargeRequest]:
    return [ChargeRequest("alice", TO, parts=1, id=f"{tag}-{i}") for i in range(n)]


def test_batches_share_one_connection_given_back_on_close(alice: Any, db_url: str) -> None:
    pool = alice.engine.pool
    charger = Charger(alice)
    for i in range(3):
        assert charger.charge(ChargeRequest("alice", TO, parts=1, id=f"m-{i}")).status == "charged"
        assert pool.checkedout() == 1  # the same one, kept between batches
    assert _balance(db_url) == Decimal(999_997)  # each batch committed as it returned
    charger.close()
    assert pool.checkedout() == 0
    # Used again after close, it takes a connection anew and still replays what it charged.
    again = charger.charge(ChargeRequest("alice", TO, parts=1, id="m-0"))
    assert again.replayed and again.balance == Decimal(999_999)
    charger.close()
    assert pool.checkedout() == 0


def test_closing_commits_a_batch_still_in_flight(alice: Any, db_url: str) -> None:
    with Charger(alice) as charger:
        pending = charger.begin(_batch("big", BULK_BATCH))
    assert alice.engine.pool.checkedout() == 0
    assert pending.wait()[-1].balance == Decimal(1_000_000 - BULK_BATCH)
    assert _balance(db_url) == Decimal(1_000_000 - BULK_BATCH)


def test_leaving_on_an_error_rolls_back_a_batch_not_waited_for(alice: Any,
                                                              db_url: str) -> None:
    with pytest.raises(KeyError), Charger(alice) as charger:
        charger.begin(_batch("small", 3))  # small: its commit waits for ``wait``
        raise KeyError("the caller failed before reporting the results")
    assert alice.engine.pool.checkedout() == 0
    assert _balance(db_url) == Decimal(1_000_000)
    assert ledger.get_account(alice, "alice").balance == Decimal(1_000_000)


def test_a_failed_batch_leaves_the_connection_usable(alice: Any, db_url: str) -> None:
    ledger.add_user(alice, "bob")
    with Charger(alice) as charger:
        charger.charge(ChargeRequest("alice", TO, parts=1, id="dup"))
        # The id used again by another user: a conflict, answered, nothing charged.
        conflict = charger.charge(ChargeRequest("bob", TO, parts=1, id="dup"))
        assert conflict.status == "error" and conflict.reason == "conflict"
        assert charger.charge(ChargeRequest("alice", TO, parts=2, id="next")).status == "charged"
    assert _balance(db_url) == Decimal(1_000_000 - 3)


def test_a_price_changed_by_another_process_applies_to_the_next_batch(
        alice: Any, db_url: str) -> None:
    """The Charger reuses its last batch's prices (and quotes) only while they are the same."""
    other = open_db(db_url, actor="admin")
    try:
        with Charger(alice) as charger:
            first = charger.charge(ChargeRequest("alice", TO, parts=2, id="p-1"))
            assert first.cost == Decimal(2) and first.rule == "default"
            pricing.set_price(other, "HU", "0.25")
            second = charger.charge(ChargeRequest("alice", TO, parts=2, id="p-2"))
            assert (second.cost, second.price, second.rule) == (Decimal("0.5"),
                                                                Decimal("0.25"), "HU")
            pricing.delete_price(other, "HU")
            third = charger.charge(ChargeRequest("alice", TO, parts=2, id="p-3"))
            assert (third.cost, third.rule) == (Decimal(2), "default")
    finally:
        other.dispose()
    assert _balance(db_url) == Decimal(1_000_000) - Decimal("4.5")
