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


def test_expiry_racing_settles_ends_each_hold_once(db: Any, db_url: str, tmp_path: Path
                                                  ) -> None:
    """`holds expire` (voiding) in one process while another settles the same holds: each
    hold is settled or voided, never both, and the accounts agree with the journal."""
    pricing.set_price(db, "default", "0.02")
    for u in USERS:
        ledger.add_user(db, u)
        ledger.create_power(db, u, initial=INITIAL)
    n = 20_000  # settles take seconds: expiry, a process started after the first, races them
    ids = [f"r-{i:05d}" for i in range(n)]
    holds = tmp_path / "holds.jsonl"
    holds.write_text("".join(json.dumps({"op": "hold", "user": USERS[i % 3], "to": TO,
                                         "parts": 1, "id": msg_id}) + "\n"
                             for i, msg_id in enumerate(ids)))
    settles = tmp_path / "settles.jsonl"
    # Newest first: expiry takes the oldest first, so the two meet somewhere in the middle.
    settles.write_text("".join(json.dumps({"op": "settle", "id": i}) + "\n"
                               for i in reversed(ids)))
    env = {**child_env(), "SMSCREDITS_HOLD_EXPIRY": "void"}
    base = [sys.executable, "-m", "smscredits", "--db", db_url]
    subprocess.run([*base, "charge", "--file", str(holds)], check=True, capture_output=True,
                   cwd=ROOT, env=env, timeout=TIMEOUT)
    results = (tmp_path / "settled.jsonl").open("w+")
    settling = subprocess.Popen([*base, "charge", "--file", str(settles)], cwd=ROOT, env=env,
                                stdout=results, stderr=subprocess.PIPE)
    while settling.poll() is None and not Path(results.name).stat().st_size:
        pass  # the first settles are in: expiry now races the rest
    expired = 0
    while settling.poll() is None or expired == 0:
        done = subprocess.run([*base, "--json", "holds", "expire", "--older-than", "0s"],
                              capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr
        expired += len(json.loads(done.stdout))
        if settling.poll() is not None:
            break
    _, err = settling.communicate(timeout=TIMEOUT)
    assert settling.returncode == 0, err
    results.seek(0)
    lines = [json.loads(x) for x in results.read().splitlines()]
    results.close()
    assert {r["status"] for r in lines} <= {"settled", "voided"}
    status, kinds = state(db)
    assert set(status.values()) <= {"settled", "voided"}
    assert all(kinds[(i, "message.settled")] + kinds[(i, "message.voided")]
               + kinds[(i, "message.expired")] == 1 for i in ids)
    voided = sum(s == "voided" for s in status.values())
    assert voided == expired  # what expiry answered it ended is what it ended
    if "postgres" in db_url:  # SQLite's one writer at a time may let the stream finish first
        assert 0 < voided < n, "no race: one side ended every hold"
    for u in USERS:
        account = ledger.get_account(db, u)
        taken = sum(PRICE for i, msg_id in enumerate(ids)
                    if USERS[i % 3] == u and status[msg_id] == "settled")
        assert (account.balance, account.held) == (to_decimal(INITIAL - taken), 0)
    assert verify(db).ok
    print(f"\n[summary] expiry race engine={'postgres' if 'postgres' in db_url else 'sqlite'} "
          f"holds={n} settled={n - voided} voided_by_expiry={voided}")
