"""Charges over HTTP across a user's local midnight, on SQLite and Postgres.

Two ``smscredits serve`` processes run on clocks ``SKEW`` apart (``tests/shifted_clock.py``:
the host's clock plus an offset read from a file), and clients charge one user with a daily
limit through both while the user's midnight passes on each. The ahead server starts the new
day while the behind one is still in the old (whose later charges are then stamped no
earlier than the account's last event, in the new day): the old day keeps exactly its
limit, the new day starts empty and fills to exactly its limit, no event is stamped earlier
than the one before it, ``limits show`` agrees with the journal, and ``verify`` passes.
Nothing sleeps to move time: the servers read their offsets at every reading of the clock,
and the clients charge until the behind clock is past midnight.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from smscredits import clock
from tests.helpers import data
from tests.serve_server import start_server
from tests.shifted_clock import write_offset
from tests.test_races import (
    BUDAPEST,
    instants_out_of_order,
    said,
    setup,
    shifted,
    us,
    verify_problems,
)

pytestmark = pytest.mark.race

DAILY = 20  # the limit, in credits: one charge of one part costs 1
MIDNIGHT = datetime(2031, 1, 14, tzinfo=BUDAPEST)  # mid-week, mid-month: only the day turns
SKEW = timedelta(seconds=2)  # how far the ahead server's clock is ahead of the behind one's
LEAD = timedelta(seconds=0.5)  # the ahead clock starts this long before midnight ...
TAIL = timedelta(seconds=0.5)  # ... the charges go on until the behind one is this far past
GIVE_UP = timedelta(seconds=30)  # ... or, if the new day never fills, this long (a failure)
CLIENTS = 4  # per server


def test_charges_across_midnight_through_two_servers_on_two_clocks(
        cli: Any, db_url: str, tmp_path: Path) -> None:
    setup(cli, "price set default 1", "user add alice --tz Europe/Budapest",
          "power create alice credits --initial 1000", f"limits set alice --daily {DAILY}")
    behind, ahead = tmp_path / "behind.offset", tmp_path / "ahead.offset"

    def set_clocks(behind_shows: datetime) -> int:
        """The behind clock showing ``behind_shows`` now, the ahead one ``SKEW`` later; the
        behind clock's offset (µs). One write each, read whole by the servers."""
        offset = us(behind_shows - clock.now())
        write_offset(behind, offset)
        write_offset(ahead, offset + us(SKEW))
        return offset

    set_clocks(MIDNIGHT - timedelta(hours=1))  # while the servers start
    servers = [start_server(db_url, tmp_path, clock_file=f) for f in (behind, ahead)]
    answers: list[tuple[int, dict[str, Any]]] = []
    try:
        offset = set_clocks(MIDNIGHT - LEAD - SKEW)
        end, give_up = MIDNIGHT + TAIL, clock.now() + GIVE_UP

        def going() -> bool:
            """Until the behind clock is past midnight and both days could be full (the old
            one holds at most ``DAILY``), or the time to give up has come."""
            behind_now = clock.now() + timedelta(microseconds=offset)
            both_full = sum(status == 200 for status, _ in answers) >= 2 * DAILY
            return (behind_now < end or not both_full) and clock.now() < give_up

        async def client(server: int, number: int) -> None:
            async with httpx.AsyncClient(base_url=servers[server].url, timeout=30) as http:
                for n in itertools.count():
                    if not going():
                        return
                    response = await http.post("/v1/charge", json={
                        "user": "alice", "to": "+36301234567", "parts": 1,
                        "id": f"m-{server}-{number}-{n}"})
                    answers.append((response.status_code, response.json()))

        async def load() -> None:
            await asyncio.gather(*(client(s, c) for s in range(2) for c in range(CLIENTS)))

        asyncio.run(load())
    finally:
        codes = [s.stop() for s in servers]
    assert codes == [0, 0], [s.log_text()[-3000:] for s in servers]
    # Every answer a charge or a refusal by the daily limit, with the numbers that decided it.
    charged = [a for status, a in answers if status == 200]
    refused = [a for status, a in answers if status != 200]
    assert all(a["status"] == "charged" and not a["replayed"] for a in charged)
    assert all(status == 402 and a["error"]["code"] == "daily_limit"
               for status, a in answers if status != 200), _odd(answers)
    assert refused, "the limit never bound: the test proves nothing"
    _check_days(cli, db_url, charged, offset)


def _odd(answers: list[tuple[int, dict[str, Any]]]) -> list[Any]:
    return [(s, a) for s, a in answers if s not in (200, 402)][:3]


def _check_days(cli: Any, db_url: str, charged: list[dict[str, Any]], offset: int) -> None:
    events = data(cli("events", "alice", "--json", "--limit", "100000",
                      "--kind", "message.charged"))
    events.sort(key=lambda e: e["id"])
    assert Counter(e["ref"] for e in events) == Counter(a["id"] for a in charged)
    # Each local day's window within the limit at every step of the journal, and both days
    # full: the old one before midnight, the new one after it, from zero.
    spent = Counter[date]()
    for e in events:
        day = datetime.fromisoformat(e["at"]).astimezone(BUDAPEST).date()
        spent[day] += -int(e["amount"])
        assert spent[day] <= DAILY, f"{day} went over its limit at event {e['id']}"
    assert spent == {MIDNIGHT.date() - timedelta(days=1): DAILY, MIDNIGHT.date(): DAILY}
    assert instants_out_of_order(db_url, "alice") == []
    account = data(cli("credits", "balance", "alice", "--json"))
    assert account["balance"] == 1000 - 2 * DAILY
    problems = verify_problems(cli("verify", "--json"))
    assert problems == [], problems
    with shifted(offset):  # on the behind clock, now past midnight: the new day's windows
        shown = cli("limits", "show", "alice", "--json")
    assert shown.exit_code == 0, said(shown)
    windows = {w["window"]: w for w in shown.json()["windows"]}
    assert (windows["day"]["spent"], windows["day"]["remaining"]) == (DAILY, 0)
    assert windows["week"]["spent"] == windows["month"]["spent"] == 2 * DAILY
