"""Concurrency and crash safety with real OS processes, on SQLite and Postgres.

The races run in a pool of 8 worker processes (``python -c WORKER``, started once for the
module). For each race every worker gets its job, opens the database and says ``ready``;
once all are ready, one line each on their stdin releases them together: a start barrier,
never a sleep. ``refill run`` races run the CLI itself in fresh processes behind the same
kind of barrier. Each test prints a one-line summary (processes, attempts, successes,
overdrafts found); run pytest with ``-s`` to see them.
"""

from __future__ import annotations

import json
import os
import select as io_select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select

from smscredits import ledger, pricing, reads, refills
from smscredits.storage.tables import events, messages, refill_applications
from smscredits.verify import verify

ROOT = Path(__file__).resolve().parent.parent
TO = "+36301234567"
TIMEOUT = 120

# A pool of worker processes, started once for the module (Python and SQLAlchemy take a
# second each to start). For each race every worker gets its job as a JSON line, opens the
# database and says ``ready``; once all are ready, one ``go`` line each releases them
# together. Each answers with one JSON summary line.
WORKER = r"""
import json, sys
from smscredits import ledger
from smscredits.charging import Charger, ChargeRequest
from smscredits.storage.engine import open_db

print("started", flush=True)
while line := sys.stdin.readline():
    job = json.loads(line)
    db = open_db(job["url"], actor=job["mode"] + "-worker")
    charger = Charger(db)
    print("ready", flush=True)
    sys.stdin.readline()
    out = {"ok": 0, "refused": {}, "errors": [], "balances": []}
    for _ in range(job["n"]):
        try:
            if job["mode"] == "charge":
                r = charger.charge(ChargeRequest(job["user"], job["to"], parts=1))
                if r.status == "charged":
                    out["ok"] += 1
                    out["balances"].append(str(r.balance))
                else:
                    out["refused"][r.reason] = out["refused"].get(r.reason, 0) + 1
            else:
                change = ledger.add_credits(db, job["user"], job["amount"])
                out["ok"] += 1
                out["balances"].append(str(change.balance))
        except Exception as e:
            out["errors"].append(repr(e))
    db.dispose()
    print(json.dumps(out), flush=True)
"""
POOL_SIZE = 8

# The CLI itself (what ``python -m smscredits`` runs), behind a start barrier: the heavy
# imports are done before ``ready`` (on stderr) so that the runs really start together.
CLI = r"""
import sys
import psycopg, sqlalchemy  # noqa: F401
import smscredits.refills, smscredits.storage.engine  # noqa: F401
from smscredits.cli import main
sys.stderr.write("ready\n")
sys.stderr.flush()
sys.stdin.readline()
sys.argv = ["smscredits", *sys.argv[1:]]
main()
"""


def child_env(config_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)  # the test's isolated settings (conftest) included
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if config_dir is not None:  # started outside a test: isolate it here
        for name in [n for n in env if n.startswith("SMSCREDITS_")]:
            del env[name]
        env["SMSCREDITS_CONFIG_DIR"] = str(config_dir)
    return env


LAST_RACE: dict[str, float] = {}  # seconds of the last race: startup, and from go to done


@dataclass
class Worker:
    proc: subprocess.Popen[str]
    log: Path  # its stderr

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def receive(self) -> str:
        """One line, or fail (with its stderr) if it died or hangs."""
        assert self.proc.stdout is not None
        ready, _, _ = io_select.select([self.proc.stdout], [], [], TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            pytest.fail(f"worker died or hung: {self.log.read_text()[-3000:]}")
        return line.strip()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Worker]]:
    home = tmp_path_factory.mktemp("workers")
    env = child_env(home / "config")
    pool = []
    for i in range(POOL_SIZE):
        log = home / f"worker{i}.log"
        with log.open("w") as err:
            proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                    env=env)
        pool.append(Worker(proc, log))
    try:
        for w in pool:
            assert w.receive() == "started"
        yield pool
    finally:
        for w in pool:
            if w.proc.stdin:
                w.proc.stdin.close()
        for w in pool:
            try:
                w.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()


def race(pool: list[Worker], jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give worker i job i; release them all at once; their summaries."""
    busy = pool[: len(jobs)]
    started = time.monotonic()
    for w, job in zip(busy, jobs, strict=True):
        w.send(json.dumps(job))
    for w in busy:
        assert w.receive() == "ready"
    go = time.monotonic()
    for w in busy:  # the barrier opens
        w.send("go")
    summaries = [json.loads(w.receive()) for w in busy]
    LAST_RACE.update(startup=go - started, race=time.monotonic() - go)
    return summaries


def jobs(mode: str, url: str, user: str, count: int, each: int, amount: int = 0) -> list[
        dict[str, Any]]:
    return [{"mode": mode, "url": url, "user": user, "n": each, "amount": amount, "to": TO}
            for _ in range(count)]


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def run_together(argvs: list[list[str]]) -> list[Done]:
    """Start every process, wait until all are ready (on stderr), release them, collect."""
    started = time.monotonic()
    procs = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env())
        for argv in argvs
    ]
    try:
        for p in procs:
            assert p.stderr is not None
            line = p.stderr.readline()
            if line.strip() != "ready":
                out, err = p.communicate(timeout=TIMEOUT)
                pytest.fail(f"child did not start: {line}{out}{err}")
        go = time.monotonic()
        for p in procs:  # the barrier opens
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        done = []
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            done.append(Done(p.returncode, out, err))
        LAST_RACE.update(startup=go - started, race=time.monotonic() - go)
        return done
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def engine_of(url: str) -> str:
    return "postgres" if url.startswith("postgresql") else "sqlite"


def report(test: str, url: str, **numbers: Any) -> None:
    numbers.update({f"{k}_s": round(v, 2) for k, v in LAST_RACE.items()})
    LAST_RACE.clear()
    fields = " ".join(f"{k}={v}" for k, v in numbers.items())
    print(f"\n[summary] {test} engine={engine_of(url)} {fields}")


def credit_log(db: Any, user: str) -> list[Any]:
    """The user's credit log, oldest first."""
    return list(reversed(reads.query_events(db, user, credit_only=True, limit=100_000)))


def log_overdrafts(db: Any, user: str, floor: Decimal) -> int:
    """Credit-log events whose balance after went below the floor."""
    return sum(1 for e in credit_log(db, user) if e.balance_after < floor)


def assert_ledger_consistent(db: Any, user: str) -> None:
    """The log replays to the balance, event by event, and ``verify`` finds nothing."""
    running = Decimal(0)
    for e in credit_log(db, user):
        running += e.amount
        assert e.balance_after == running, f"event {e.id} ({e.kind}): lost or reordered update"
    assert running == ledger.get_account(db, user).balance
    rep = verify(db)
    assert rep.ok, rep.problems


def noon_zone() -> str:
    """A fixed-offset zone where it is about noon now: no day window turns over mid-test."""
    offset = (12 - datetime.now(UTC).hour + 12) % 24 - 12  # -12 .. 11 hours
    return f"Etc/GMT{-offset:+d}"  # POSIX sign: Etc/GMT-3 is UTC+3


def setup_user(db: Any, name: str, initial: int, *, overdraft: int | None = 0,
               tz: str | None = None) -> None:
    ledger.add_user(db, name, tz=tz or noon_zone())
    ledger.create_power(db, name, initial=initial, overdraft=overdraft)


# -- 1. a balance that covers only part of the attempts ----------------------------------


def tally(summaries: list[dict[str, Any]]) -> tuple[int, Counter[str], list[Any]]:
    """Successes, refusals by reason and errors, summed over the workers' summaries."""
    refused: Counter[str] = Counter()
    for s in summaries:
        refused.update(s["refused"])
    return (sum(s["ok"] for s in summaries), refused,
            [e for s in summaries for e in s["errors"]])


@pytest.mark.parametrize("overdraft", [0, 10])
def test_eight_processes_never_overdraw(db: Any, db_url: str, pool: list[Worker],
                                       overdraft: int) -> None:
    procs, each, initial = 8, 30, 100
    pricing.set_price(db, "default", "1")
    setup_user(db, "alice", initial * 1000, overdraft=overdraft * 1000)

    summaries = race(pool, jobs("charge", db_url, "alice", procs, each))

    attempts = procs * each
    ok, refused, errors = tally(summaries)
    seen = [Decimal(b) for s in summaries for b in s["balances"]]
    floor = Decimal(-overdraft)
    overdrafts = sum(1 for b in seen if b < floor)
    balance = ledger.get_account(db, "alice").balance
    overdrafts += balance < floor
    charged = reads.query_events(db, "alice", kinds=["message.charged"], limit=100_000)
    overdrafts += log_overdrafts(db, "alice", floor)
    report("never_overdraw", db_url, overdraft=overdraft, processes=procs, attempts=attempts,
           successes=ok, processes_with_successes=sum(1 for s in summaries if s["ok"]),
           refused=sum(refused.values()), overdrafts_found=overdrafts)

    assert errors == []
    assert_ledger_consistent(db, "alice")
    assert overdrafts == 0
    assert ok == initial + overdraft
    assert dict(refused) == {"insufficient_credits": attempts - initial - overdraft}
    assert balance == floor
    assert len(charged) == ok
    assert sum(e.amount for e in charged) == -ok
    # Each success saw its own balance: every value from initial-1 down to -overdraft once.
    assert sorted(seen) == [Decimal(v) for v in range(-overdraft, initial)]
    assert sorted(e.balance_after for e in charged) == sorted(seen)


# -- 2. a daily limit as the binding constraint -------------------------------------------


def test_eight_processes_never_exceed_a_daily_limit(db: Any, db_url: str,
                                                    pool: list[Worker]) -> None:
    procs, each, limit = 8, 30, 50
    pricing.set_price(db, "default", "1")
    setup_user(db, "alice", 1000 * 1000)
    ledger.set_limits(db, "alice", {"day": limit * 1000})

    summaries = race(pool, jobs("charge", db_url, "alice", procs, each))

    attempts = procs * each
    ok, refused, errors = tally(summaries)
    charged = reads.query_events(db, "alice", kinds=["message.charged"], limit=100_000)
    day = reads.show_limits(db, "alice").windows[0]
    overdrafts = log_overdrafts(db, "alice", Decimal(0))
    over_limit = max(0, ok - limit)
    report("daily_limit", db_url, processes=procs, attempts=attempts, successes=ok,
           processes_with_successes=sum(1 for s in summaries if s["ok"]),
           refused=sum(refused.values()), over_limit=over_limit, overdrafts_found=overdrafts)

    assert errors == []
    assert_ledger_consistent(db, "alice")
    assert ok == limit and over_limit == 0
    assert dict(refused) == {"daily_limit": attempts - limit}
    assert len(charged) == limit and sum(e.amount for e in charged) == -limit
    assert ledger.get_account(db, "alice").balance == 1000 - limit
    assert (day.window, day.spent, day.remaining) == ("day", limit, 0)
    assert overdrafts == 0


# -- 3. `credits add` racing charges ------------------------------------------------------


def test_top_ups_racing_charges_lose_nothing(db: Any, db_url: str, pool: list[Worker]) -> None:
    chargers, charges_each, adders, adds_each, add = 4, 50, 4, 10, 5
    pricing.set_price(db, "default", "1")
    setup_user(db, "alice", 0)

    summaries = race(pool, jobs("charge", db_url, "alice", chargers, charges_each)
                     + jobs("add", db_url, "alice", adders, adds_each, add * 1000))
    charge_s, add_s = summaries[:chargers], summaries[chargers:]

    ok, refused, _ = tally(charge_s)
    added = sum(s["ok"] for s in add_s)
    errors = tally(summaries)[2]
    seen = [Decimal(b) for s in summaries for b in s["balances"]]
    log = credit_log(db, "alice")
    overdrafts = sum(1 for b in seen if b < 0) + sum(1 for e in log if e.balance_after < 0)
    balance = ledger.get_account(db, "alice").balance
    report("topups_vs_charges", db_url, processes=chargers + adders,
           attempts=chargers * charges_each + adders * adds_each, charges=ok,
           adds=added, refused=sum(refused.values()), overdrafts_found=overdrafts)

    assert errors == []
    assert_ledger_consistent(db, "alice")
    assert added == adders * adds_each
    assert set(refused) <= {"insufficient_credits"}
    assert ok + sum(refused.values()) == chargers * charges_each
    assert balance == added * add - ok
    assert balance >= 0 and overdrafts == 0
    kinds = Counter(e.kind for e in log)
    assert kinds["message.charged"] == ok
    assert kinds["credits.added"] == added
    assert all(e.balance_after >= 0 for e in log)


# -- 4. two `refill run` racing ------------------------------------------------------------


def test_two_refill_runs_apply_each_period_once(db: Any, db_url: str) -> None:
    rounds, days, add = 3, 5, 5
    now = datetime.now(UTC)
    # Scheduled exactly five days ago, daily at 12 hours from now's time of day: five
    # occurrences are due, and none is near the start or the end of the interval.
    past = now - timedelta(days=days)
    at = (now + timedelta(hours=12)).strftime("%H:%M")
    total_applied = duplicates = 0
    split: list[int] = []  # applications per process, per round
    for n in range(rounds):
        user = f"refill{n}"
        setup_user(db, user, 0, tz="UTC")
        with freeze_time(past):
            plan = refills.schedule_plan(db, user, every="day", at=at, add=add * 1000)

        argv = [sys.executable, "-c", CLI, "--db", db_url, "refill", "run", "--json"]
        done = run_together([argv, argv])

        applied = []
        for d in done:
            assert d.returncode == 0, d.stderr
            mine = [a for a in json.loads(d.stdout) if a["plan_id"] == plan.id and a["applied"]]
            applied += mine
            split.append(len(mine))
        periods = Counter(a["period"] for a in applied)
        duplicates += sum(c - 1 for c in periods.values())
        total_applied += len(applied)
        assert len(applied) == days, applied
        assert len(periods) == days, periods
        assert ledger.get_account(db, user).balance == days * add
        log = [e for e in credit_log(db, user) if e.kind == "refill.applied"]
        assert len(log) == days and sum(e.amount for e in log) == days * add
        with db.read() as conn:
            claims = conn.execute(
                select(func.count()).select_from(refill_applications)
                .where(refill_applications.c.plan_id == plan.id)
            ).scalar_one()
        assert claims == days
    report("refill_race", db_url, processes=2, rounds=rounds, applications=total_applied,
           expected=rounds * days, duplicates=duplicates, overdrafts_found=0,
           per_process="+".join(map(str, split)))
    assert duplicates == 0
    for n in range(rounds):
        assert_ledger_consistent(db, f"refill{n}")


# -- crash: kill -9 half-way through `charge --file` ---------------------------------------

CRASH_LINES = 20_000
CRASH_USERS = ("c0", "c1", "c2")
CRASH_INITIAL = 1_000_000 * 1000  # millis, far more than the file costs
PRICE_MILLIS = 15  # "0.015" per part


def crash_file(path: Path) -> dict[str, tuple[str, int]]:
    """Write the file; {id: (user, cost in millis)}."""
    lines, expected = [], {}
    for i in range(CRASH_LINES):
        user, parts, msg_id = CRASH_USERS[i % 3], 1 + i % 4, f"crash-{i:05d}"
        lines.append(json.dumps({"user": user, "to": TO, "parts": parts, "id": msg_id}))
        expected[msg_id] = (user, parts * PRICE_MILLIS)
    path.write_text("\n".join(lines) + "\n")
    return expected


def ledger_state(db: Any) -> tuple[dict[str, str], Counter[str], dict[str, Decimal]]:
    """Message status by id, message.charged events by ref, balance by user."""
    with db.read() as conn:
        status = dict(conn.execute(select(messages.c.id, messages.c.status)).all())
        refs = Counter(dict(conn.execute(
            select(events.c.ref, func.count()).where(events.c.kind == "message.charged")
            .group_by(events.c.ref)
        ).all()))
    balances = {u: ledger.get_account(db, u).balance for u in CRASH_USERS}
    return status, refs, balances


def test_kill_9_mid_batch_leaves_each_message_all_or_nothing(
    db: Any, db_url: str, tmp_path: Path
) -> None:
    pricing.set_price(db, "default", "0.015")
    for u in CRASH_USERS:
        setup_user(db, u, CRASH_INITIAL)
    file = tmp_path / "charges.jsonl"
    expected = crash_file(file)
    argv = [sys.executable, "-m", "smscredits", "--db", db_url, "charge", "--file", str(file)]

    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env=child_env())
    received: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        while len(received) < 2000:
            raw = proc.stdout.readline()
            if not raw:
                break
            received.append(json.loads(raw))
        os.kill(proc.pid, signal.SIGKILL)
        tail = proc.stdout.read()  # lines already written before the kill
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "charge --file finished before the kill"
    received += [json.loads(x) for x in tail.split(b"\n")[:-1]]  # a cut last line is dropped

    # After the crash: the journal agrees with the balances and each id is all or nothing.
    rep = verify(db)
    assert rep.ok, rep.problems
    status, refs, balances = ledger_state(db)
    assert set(status.values()) <= {"charged"}
    half: list[str] = []
    spent: Counter[str] = Counter()
    for msg_id, (user, cost) in expected.items():
        if msg_id in status:
            if refs[msg_id] != 1:
                half.append(msg_id)
            spent[user] += cost
        elif refs[msg_id] != 0:
            half.append(msg_id)
    assert half == [], f"{len(half)} half-charged messages, e.g. {half[:5]}"
    assert sum(refs.values()) == len(status)
    for u in CRASH_USERS:
        assert balances[u] == Decimal(CRASH_INITIAL - spent[u]) / 1000
    charged_before = set(status)
    assert len(charged_before) >= len(received) >= 2000
    assert all(r["status"] == "charged" and r["id"] in charged_before for r in received)
    assert len(charged_before) < CRASH_LINES

    # The same file again, to the end: only the rest is charged.
    LAST_RACE["until_kill"] = time.monotonic() - started
    started = time.monotonic()
    rerun = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=child_env(),
                           timeout=TIMEOUT)
    LAST_RACE["rerun"] = time.monotonic() - started
    assert rerun.returncode == 0, rerun.stderr
    results = [json.loads(x) for x in rerun.stdout.splitlines()]
    assert [r["id"] for r in results] == list(expected)
    assert all(r["status"] == "charged" for r in results)
    replayed = {r["id"] for r in results if r["replayed"]}
    assert replayed == charged_before
    status, refs, balances = ledger_state(db)
    assert len(status) == CRASH_LINES and set(status.values()) == {"charged"}
    assert set(refs) == set(expected) and set(refs.values()) == {1}
    for u in CRASH_USERS:
        cost = sum(c for user, c in expected.values() if user == u)
        assert balances[u] == Decimal(CRASH_INITIAL - cost) / 1000
    rep = verify(db)
    assert rep.ok, rep.problems
    report("crash", db_url, processes=1, lines=CRASH_LINES, results_before_kill=len(received),
           charged_before_kill=len(charged_before), replayed=len(replayed),
           charged_on_rerun=CRASH_LINES - len(replayed), half_charged=len(half),
           overdrafts_found=0)
