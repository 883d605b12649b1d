"""A charge that waits for `user set-tz` on Postgres charges in the new zone's windows.

SQLite runs one writer at a time; on Postgres a charge batch can be waiting for the power
row while a zone change commits. It must then read the new zone with the recounted windows:
reading the old zone beside the new counters would start an empty day and pass the limit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from freezegun import freeze_time

from smscredits import journal, ledger, pricing
from smscredits.charging import Charger, ChargeRequest
from smscredits.storage.engine import Db, open_db
from smscredits.storage.migrate import upgrade
from smscredits.verify import verify

TO = "+36301234567"


@pytest.fixture
def pg(pg_schema_url: str) -> Iterator[Db]:
    handle = open_db(pg_schema_url, check=False, actor="tester")
    upgrade(handle)
    yield handle
    handle.dispose()


def _waiting_for_a_lock(db: Db) -> bool:
    """Whether another session of this database waits for a row lock."""
    with db.engine.connect() as conn:
        raw: Any = conn.connection.dbapi_connection
        with raw.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()")
            return bool(cur.fetchone()[0])


def test_a_charge_waiting_for_a_zone_change_counts_in_the_new_zones_day(
        pg: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    # 19:00 UTC on the 4th is already the 5th in Auckland (UTC+13).
    with freeze_time(datetime(2026, 12, 4, 11, 30, tzinfo=UTC)):
        pricing.set_price(pg, "default", "1")
        ledger.add_user(pg, "bob", tz="UTC")
        ledger.create_power(pg, "bob", initial=100_000)
        ledger.set_limits(pg, "bob", {"day": 3_000})
        with Charger(pg) as charger:  # the 5th in Auckland, still the 4th in UTC
            assert charger.charge(ChargeRequest("bob", TO, None, 2, "m-1")).status == "charged"

    paused, release = threading.Event(), threading.Event()
    record = journal.record

    def record_then_wait(conn: Any, **fields: Any) -> int:
        event_id = record(conn, **fields)
        if fields["kind"] == "user.tz_changed":  # the user's and the power's rows are held
            paused.set()
            assert release.wait(30)
        return event_id

    monkeypatch.setattr(journal, "record", record_then_wait)
    results: list[Any] = []
    with freeze_time(datetime(2026, 12, 4, 20, 0, tzinfo=UTC)):
        mover = threading.Thread(target=ledger.set_tz, args=(pg, "bob", "Pacific/Auckland"))
        mover.start()
        assert paused.wait(30)

        def charge() -> None:
            with Charger(pg) as charger:
                results.append(charger.charge(ChargeRequest("bob", TO, None, 2, "m-2")))

        charging = threading.Thread(target=charge)
        charging.start()
        for _ in range(3000):  # until the charge waits for the zone change's rows
            if _waiting_for_a_lock(pg):
                break
        else:
            pytest.fail("the charge never waited for the zone change")
        release.set()
        mover.join(30)
        charging.join(30)
    # The Auckland day holds m-1 (2 of 3): m-2 (2 more) is over the daily limit.
    assert [(r.status, r.reason) for r in results] == [("rejected", "daily_limit")]
    assert ledger.get_user(pg, "bob").balance == Decimal(98)
    report = verify(pg)
    assert report.ok, report.problems


def test_the_lock_order_of_a_charge_and_a_zone_change_agree() -> None:
    """A charge takes the user's row before the power row, as set-tz does: two sessions
    never wait for each other in a circle."""
    from sqlalchemy.dialects import postgresql

    from smscredits.storage.charge_sql import Lookups

    sql = str(Lookups.of("postgresql").held.compile(dialect=postgresql.dialect()))
    assert sql.rstrip().endswith("FOR SHARE OF users FOR UPDATE OF powers")

