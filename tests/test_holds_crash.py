"""kill -9 of a `charge --file` stream of holds, settles and voids, then the same file again:
each message ends held, settled or voided exactly once, balances and held amounts are what
the file says, and the journal agrees (on both engines)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from smscredits import ledger, pricing
from smscredits.amounts import to_decimal
from smscredits.storage.tables import events, messages
from smscredits.verify import verify
from tests.test_concurrency import ROOT, TIMEOUT, TO, child_env

LINES = 9_000  # a third each: holds, and a settle or void of the hold before
USERS = ("k0", "k1", "k2")
INITIAL = 1_000_000 * 1000
PRICE = 20  # millis per part


def stream(path: Path) -> dict[str, tuple[str, str, int]]:
    """The file: each hold, then the settle (at 2 parts) or void of the one before it;
    {id: (user, final status, cost in millis)}."""
    lines, final = [], {}
    for i in range(LINES // 2):
        user, msg_id = USERS[i % 3], f"k-{i:05d}"
        lines.append({"op": "hold", "user": user, "to": TO, "parts": 1, "id": msg_id})
        final[msg_id] = (user, "held", PRICE)
        if i:
            before = f"k-{i - 1:05d}"
            if i % 2:
                lines.append({"op": "settle", "id": before, "parts": 2})
                final[before] = (final[before][0], "settled", 2 * PRICE)
            else:
                lines.append({"op": "void", "id": before})
                final[before] = (final[before][0], "voided", 0)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return final


def state(db: Any) -> tuple[dict[str, str], Counter[tuple[str, str]]]:
    with db.read() as conn:
        status = dict(conn.execute(select(messages.c.id, messages.c.status)).all())
        kinds = Counter({(ref, kind): n for ref, kind, n in conn.execute(
            select(events.c.ref, events.c.kind, func.count())
            .where(events.c.kind.like("message.%")).group_by(events.c.ref, events.c.kind))})
    return status, kinds


def test_kill_9_in_a_stream_of_holds_and_settles_then_a_rerun_does_nothing_twice(
        db: Any, db_url: str, tmp_path: Path) -> None:
    pricing.set_price(db, "default", "0.02")
    for u in USERS:
        ledger.add_user(db, u)
        ledger.create_power(db, u, initial=INITIAL)
    file = tmp_path / "holds.jsonl"
    final = stream(file)
    argv = [sys.executable, "-m", "smscredits", "--db", db_url, "charge", "--file", str(file)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env=child_env())
    got = 0
    try:
        assert proc.stdout is not None
        while got < 1500 and proc.stdout.readline():
            got += 1
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "charge --file finished before the kill"
    assert verify(db).ok, verify(db).problems
    status, kinds = state(db)
    assert 0 < len(status) < len(final)
    assert all(n == 1 for n in kinds.values()), "an event twice after the kill"

    rerun = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=child_env(),
                           timeout=TIMEOUT)
    assert rerun.returncode == 0, rerun.stderr
    results = [json.loads(x) for x in rerun.stdout.splitlines()]
    assert all(r["status"] != "error" for r in results), \
        [r for r in results if r["status"] == "error"][:3]

    status, kinds = state(db)
    assert status == {i: s for i, (_, s, _) in final.items()}
    assert all(n == 1 for n in kinds.values()), "an event twice after the rerun"
    for msg_id, (_, end, _) in final.items():
        released = [k for k in ("message.settled", "message.voided") if kinds[(msg_id, k)]]
        assert kinds[(msg_id, "message.held")] == 1
        assert released == ([] if end == "held" else [f"message.{end}"])
    for u in USERS:
        account = ledger.get_account(db, u)
        taken = sum(c for user, s, c in final.values() if user == u and s == "settled")
        held = sum(c for user, s, c in final.values() if user == u and s == "held")
        assert (account.balance, account.held) == (
            to_decimal(INITIAL - taken), to_decimal(held))
    assert verify(db).ok
