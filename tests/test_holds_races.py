"""Settles and voids of the same holds racing from two processes, on SQLite and Postgres.

Each process opens its own handle and Charger, says ``ready``, and then acts on each id it
reads from its stdin, one transaction per act, answering with the result. Both are sent the
same id at once and answer before the next is sent: a start barrier per id (never a sleep),
so the two acts on every id race, whichever engine runs ahead. Whatever
the interleaving, each hold ends once: the journal has one ``message.settled`` or one
``message.voided`` for it, never both, and ``verify`` finds the ledger consistent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
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
from smscredits.charging import Charger
from smscredits.storage.engine import open_db

job = json.loads(sys.argv[1])
db = open_db(job["url"], actor=job["name"])
db.hold_rules = holds.Rules(void_settled=job["void_settled"])
charger = Charger(db)
print("ready", flush=True)
while (msg_id := sys.stdin.readline().strip()):
    if job["act"] == "settle":
        r = charger.settle(msg_id)
    elif job["act"] == "void":
        r = charger.void(msg_id)
    else:
        r = charger.dlr(msg_id, job["act"], source="smpp")
    print(json.dumps([msg_id, r.status, r.replayed, r.reason]), flush=True)
charger.close()
db.dispose()
"""


def start(name: str, url: str, act: str, void_settled: str,
          log: Path) -> subprocess.Popen[str]:
    env = dict(os.environ)  # the test's isolated settings (conftest) included
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    job = {"url": url, "name": name, "act": act, "void_settled": void_settled}
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(job)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log.open("w"), text=True)


def race(url: str, acts: tuple[str, str], ids: list[str], void_settled: str,
         tmp: Path) -> list[list[Any]]:
    """Both acts over every id at once; each process's results, in its order."""
    procs = [start(f"{act}-worker", url, act, void_settled, tmp / f"w{i}.log")
             for i, act in enumerate(acts)]

    def said(i: int) -> str:
        line = procs[i].stdout.readline()  # type: ignore[union-attr]
        assert line, (tmp / f"w{i}.log").read_text()  # it died
        return line

    try:
        for i in range(len(procs)):
            assert said(i) == "ready\n"
        results: list[list[Any]] = [[] for _ in procs]
        for msg_id in ids:
            for p in procs:
                p.stdin.write(msg_id + "\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            for i, rows in enumerate(results):
                rows.append(json.loads(said(i)))
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
    """alice with 1000 credits and N holds of one part (1 credit) each."""
    db.hold_rules = holds.Rules()
    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "alice", tz="Europe/Budapest")
    ledger.create_power(db, "alice", initial=1_000_000)
    made = [f"h-{i:03d}" for i in range(N)]
    with Charger(db) as charger:
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
    settles, voids = race(db_url, ("settle", "void"), ids, void_settled, tmp_path)
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
    delivered, failed = race(db_url, ("DELIVRD", "UNDELIV"), ids, "refund", tmp_path)
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
