"""Acts on the same holds racing from two processes, on SQLite and Postgres.

Each process opens its own handle and Charger, says ``ready``, and then acts on each line
(an id) it reads from its stdin, one transaction per act, answering with the results. Both
are sent the same line at once and answer before the next is sent: a start barrier per id
(never a sleep), so the two acts on every id race, whichever engine runs ahead. Raced:
settle against void, a delivered report against a failed one, settle or void against
expiry, two expiry runs, and holds against an admin taking credits away. Whatever the
interleaving, each hold ends once (the journal has one ``message.settled``, ``voided`` or
``expired`` for it, never two), every hold stays payable, and ``verify`` finds the ledger
consistent. Run with ``-s`` to see who won how often.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from smscredits import holds, ledger, pricing
from smscredits.charging import Charger, ChargeRequest
from smscredits.storage.engine import Db
from smscredits.storage.tables import events, messages, powers
from smscredits.verify import verify

ROOT = Path(__file__).resolve().parent.parent
TO = "+36301234567"
N = 120  # holds raced over
TIMEOUT = 120

WORKER = r"""
import json, sys
from smscredits import holds
from collections import namedtuple
from smscredits import ledger
from smscredits.charging import Charger, ChargeRequest
from smscredits.charging.model import MessageOp
from smscredits.errors import InsufficientCredits
from smscredits.storage.engine import open_db

Result = namedtuple("Result", "id status replayed reason", defaults=(False, None))

job = json.loads(sys.argv[1])
db = open_db(job["url"], actor=job["name"])
db.hold_rules = holds.Rules(**job["rules"])
charger = Charger(db)
print("ready", flush=True)
while (line := sys.stdin.readline().strip()):
    if job["act"] == "expire-all":  # what `holds expire` does, ``line`` at a time
        rs = charger.expire(batch=int(line))
    elif job["act"] == "hold":
        rs = [charger.hold(ChargeRequest("alice", "+36301234567", parts=1, id=line))]
    elif job["act"] == "subtract":  # an admin taking 8 credits away
        try:
            ledger.add_credits(db, "alice", -8000)
            rs = [Result(line, "subtracted")]
        except InsufficientCredits:
            rs = [Result(line, "refused", "insufficient_credits")]
    elif job["act"] in ("settle", "void", "expire"):
        rs = charger.charge_batch([MessageOp(job["act"], line)])
    else:
        rs = [charger.dlr(line, job["act"], source="smpp")]
    print(json.dumps([[r.id, r.status, r.replayed, r.reason] for r in rs]), flush=True)
charger.close()
db.dispose()
"""


def start(name: str, url: str, act: str, rules: dict[str, Any],
          log: Path) -> subprocess.Popen[str]:
    env = dict(os.environ)  # the test's isolated settings (conftest) included
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    job = {"url": url, "name": name, "act": act, "rules": rules}
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(job)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log.open("w"), text=True)


def race(url: str, acts: tuple[str, str], lines: list[str], rules: dict[str, Any],
         tmp: Path) -> list[list[Any]]:
    """Both acts on each line (an id) at once; each process's results, in its order."""
    procs = [start(f"{act}-worker", url, act, rules, tmp / f"w{i}.log")
             for i, act in enumerate(acts)]

    def said(i: int) -> str:
        line = procs[i].stdout.readline()  # type: ignore[union-attr]
        assert line, (tmp / f"w{i}.log").read_text()  # it died
        return line

    try:
        for i in range(len(procs)):
            assert said(i) == "ready\n"
        results: list[list[Any]] = [[] for _ in procs]
        for line in lines:
            for p in procs:
                p.stdin.write(line + "\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            for i, rows in enumerate(results):
                rows += json.loads(said(i))
        for i, p in enumerate(procs):
            p.stdin.close()  # type: ignore[union-attr]
            assert p.wait(TIMEOUT) == 0, (tmp / f"w{i}.log").read_text()
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def ends(db: Db) -> dict[str, list[str]]:
    """Each message's events after its hold, oldest first."""
    found: dict[str, list[str]] = {}
    with db.read() as conn:
        for ref, kind in conn.execute(select(events.c.ref, events.c.kind)
                                      .where(events.c.kind.like("message.%"),
                                             events.c.kind != "message.held")
                                      .order_by(events.c.id)):
            found.setdefault(ref, []).append(kind)
    return found


def statuses(db: Db) -> dict[str, str]:
    with db.read() as conn:
        return dict(conn.execute(select(messages.c.id, messages.c.status)).all())


def power_row(db: Db) -> tuple[int, int]:
    with db.read() as conn:
        row = conn.execute(select(powers.c.balance, powers.c.held)).one()
    return row.balance, row.held


@pytest.fixture
def ids(db: Db) -> list[str]:
    """alice with 1000 credits and N holds of one part (1 credit) each, made an hour ago
    with a ttl of a minute: all due to expire."""
    db.hold_rules = holds.Rules(ttl_us=60_000_000)
    made = [f"h-{i:03d}" for i in range(N)]
    with freeze_time(datetime.now(UTC) - timedelta(hours=1)), Charger(db) as charger:
        pricing.set_price(db, "default", "1")
        ledger.add_user(db, "alice", tz="Europe/Budapest")
        ledger.create_power(db, "alice", initial=1_000_000)
        held = charger.charge_batch([ChargeRequest("alice", TO, parts=1, id=i, hold=True)
                                     for i in made])
    assert {r.status for r in held} == {"held"}
    assert power_row(db) == (1_000_000, N * 1000)
    return made


def first_outcomes(results: list[list[Any]]) -> Counter[str]:
    """How many first (not replayed) settles and voids the two processes made, together."""
    return Counter(status for rows in results for _, status, replayed, _ in rows
                   if not replayed and status in ("settled", "voided"))


@pytest.mark.parametrize("void_settled", ["refuse", "refund"])
def test_settle_and_void_of_the_same_holds_end_each_once(db: Db, db_url: str, ids: list[str],
                                                         void_settled: str,
                                                         tmp_path: Path) -> None:
    settles, voids = race(db_url, ("settle", "void"), ids, {"void_settled": void_settled},
                          tmp_path)
    found = ends(db)
    assert sorted(found) == ids
    for msg_id, kinds in found.items():
        # One end of the hold; with void_settled = refund, a void that came second refunds.
        assert kinds in (["message.settled"], ["message.voided"],
                         *([["message.settled", "message.refunded"]]
                           if void_settled == "refund" else [])), (msg_id, kinds)
    for (msg_id, s, s_replayed, _), (_, v, v_replayed, v_reason) in zip(settles, voids,
                                                                        strict=True):
        kinds = found[msg_id]
        if kinds == ["message.voided"]:
            assert (s, s_replayed) == ("voided", True), msg_id
            assert (v, v_replayed) == ("voided", False), msg_id
        else:
            assert (s, s_replayed) == ("settled", False), msg_id
            expected = (("refunded", False, None) if void_settled == "refund"
                        else ("error", False, "already_settled"))
            assert (v, v_replayed, v_reason) == expected, msg_id
    settled = sum(1 for k in found.values() if k == ["message.settled"])
    first = first_outcomes([settles, voids])
    print(f"settle/void race ({void_settled}): {N} holds, {first['settled']} settled first, "
          f"{first['voided']} voided first")
    assert first["settled"] + first["voided"] == N
    assert power_row(db) == (1_000_000 - settled * 1000, 0)
    report = verify(db)
    assert report.ok, report.problems[:5]


def test_racing_delivery_reports_end_each_hold_once(db: Db, db_url: str, ids: list[str],
                                                    tmp_path: Path) -> None:
    delivered, failed = race(db_url, ("DELIVRD", "UNDELIV"), ids, {}, tmp_path)
    found = ends(db)
    assert sorted(found) == ids
    for msg_id, kinds in found.items():  # a report never refunds
        assert kinds in (["message.settled"], ["message.voided"]), (msg_id, kinds)
    now = statuses(db)
    for (msg_id, d, _, _), (_, f, _, _) in zip(delivered, failed, strict=True):
        # Both reports answer with the one outcome: the first made it, the second replays it.
        assert d == f == now[msg_id], (msg_id, d, f, now[msg_id])
    first = first_outcomes([delivered, failed])
    print(f"report race: {N} holds, {first['settled']} settled first, {first['voided']} voided"
          " first")
    assert first["settled"] + first["voided"] == N
    settled = sum(1 for k in found.values() if k == ["message.settled"])
    assert power_row(db) == (1_000_000 - settled * 1000, 0)
    report = verify(db)
    assert report.ok, report.problems[:5]


@pytest.mark.parametrize(("act", "expiry"), [("settle", "void"), ("void", "settle")])
def test_an_act_racing_expiry_ends_each_hold_once(db: Db, db_url: str, ids: list[str],
                                                  act: str, expiry: str,
                                                  tmp_path: Path) -> None:
    rules = {"void_settled": "refuse", "expiry": expiry, "ttl_us": 60_000_000}
    acted, expired = race(db_url, (act, "expire"), ids, rules, tmp_path)
    found = ends(db)
    assert sorted(found) == ids
    mine = {"settle": "message.settled", "void": "message.voided"}[act]
    for msg_id, kinds in found.items():
        assert kinds in ([mine], ["message.expired"]), (msg_id, kinds)
    now = statuses(db)
    for (msg_id, a, a_replayed, a_reason), (_, e, _, e_reason) in zip(acted, expired,
                                                                      strict=True):
        if found[msg_id] == [mine]:  # the act first: expiry found it ended
            assert (a, a_replayed, e) == (now[msg_id], False, "ignored"), msg_id
        else:  # expired first: the act answers with that outcome, or is refused by it
            assert (e, e_reason) == (now[msg_id], "expired"), msg_id
            assert (a, a_replayed) == (now[msg_id], True) or (a, a_reason) == (
                "error", "already_settled"), (msg_id, a, a_reason)
    print(f"{act}/expire race: {N} holds, {sum(k == [mine] for k in found.values())} by "
          f"{act}, {sum(k == ['message.expired'] for k in found.values())} expired")
    assert power_row(db)[1] == 0
    report = verify(db)
    assert report.ok, report.problems[:5]


def test_two_expiry_runs_at_once_end_each_hold_once(db: Db, db_url: str, ids: list[str],
                                                    tmp_path: Path) -> None:
    """Two ``holds expire`` from cron on two hosts, ten holds a transaction."""
    rules = {"expiry": "settle", "ttl_us": 60_000_000}
    first, second = race(db_url, ("expire-all", "expire-all"), ["10"], rules,
                         tmp_path)
    ended = [row[0] for row in first + second]
    assert sorted(ended) == ids  # each once, by one of them
    assert {(s, r) for _, s, _, r in first + second} == {("settled", "expired")}
    found = ends(db)
    assert all(kinds == ["message.expired"] for kinds in found.values()), found
    print(f"expiry race: {N} holds, {len(first)} and {len(second)} expired by each")
    assert power_row(db) == (1_000_000 - N * 1000, 0)
    report = verify(db)
    assert report.ok, report.problems[:5]


def test_holds_racing_an_admin_subtracting_credits_keep_every_hold_payable(
        db: Db, db_url: str, ids: list[str], tmp_path: Path) -> None:
    """1000 credits, 120 held; one process holds 1 more per line, the other takes 8 away:
    together they ask for more than is available, and neither may leave a hold unpayable."""
    lines = [f"n-{i:03d}" for i in range(N)]
    held, taken = race(db_url, ("hold", "subtract"), lines, {"ttl_us": 3_600_000_000},
                       tmp_path)
    assert {s for _, s, _, _ in held} <= {"held", "rejected"}, held
    assert {r for _, s, _, r in held if s == "rejected"} <= {"insufficient_credits"}
    assert {s for _, s, _, _ in taken} <= {"subtracted", "refused"}, taken
    holds_ok = sum(s == "held" for _, s, _, _ in held)
    subtracted = sum(s == "subtracted" for _, s, _, _ in taken)
    balance, now_held = power_row(db)
    assert (balance, now_held) == (1_000_000 - 8000 * subtracted, (N + holds_ok) * 1000)
    assert balance - now_held >= 0
    assert balance - now_held < 8000  # refused only when fewer than 8 were left
    print(f"hold/subtract race: {holds_ok} held, {subtracted} subtractions, "
          f"{(balance - now_held) / 1000} left")
    report = verify(db)
    assert report.ok, report.problems[:5]
