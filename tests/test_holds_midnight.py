"""Holds, and their settles, voids and expiries, across a user's local midnight, on SQLite and
Postgres.

A hold counts in the limit windows when it is made; its settle, void or expiry moves the
windows it was counted in by the difference only while they are current (``holds``): a day
that has ended keeps what its holds took, and the new day is never given back what it did
not take. These tests hold that promise with many real processes:

- ``charge --file -`` co-processes on two clocks seconds apart (``tests/shifted_clock.py``:
  real time plus an offset read from a file), holding and settling or voiding each other's
  holds while the user's midnight passes: each local day's window within the daily limit at
  every step of the journal, `limits show` equal to the journal, events never back in time,
  nothing overdrawn, every hold ended once, `verify` clean;
- one hold, made before midnight and settled for fewer or more parts or voided after it, in
  process (freezegun): which window each outcome moves, and which it leaves;
- `verify`, `credits balance` and `holds list` read again and again beside four writers:
  every read consistent, no false alarm;
- two cron runs of `holds expire` at once, on clocks on either side of midnight: each hold
  expires exactly once.

Nothing sleeps to move time: co-processes read their clock's offset from a file the test
writes, and are fed one line (or command) at a time until their clock passes a chosen
instant. Run with ``-s`` to see each round's figures.
"""

from __future__ import annotations

import functools
import json
import os
import random
import select as io_select
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from smscredits import clock
from smscredits.storage.engine import open_db
from smscredits.storage.tables import events, users
from tests.helpers import data, doc, kill_left, ok
from tests.shifted_clock import write_offset
from tests.test_races import (
    BUDAPEST,
    EPOCH,
    OFFSET_ENV,
    TIMEOUT,
    WRAPPER,
    instants_out_of_order,
    said,
    setup,
    shifted,
    us,
    verify_problems,
)

pytestmark = pytest.mark.race

Cli = Callable[..., Any]
TO = "+36301234567"
SKEW = timedelta(seconds=2)  # how far the ahead clocks are ahead of the behind ones
LEAD = timedelta(seconds=0.5)  # the ahead clocks start this long before midnight
TAIL = timedelta(seconds=0.5)  # the lines go on until the behind clocks are this far past it
GIVE_UP = timedelta(seconds=20)  # ... or, if the new day never fills, this far (a failure)
RELEASES = ("message.settled", "message.voided", "message.expired")


@pytest.fixture
def url(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test's database (each engine), set for every process the test starts."""
    monkeypatch.setenv("SMSCREDITS_DB", db_url)
    monkeypatch.setenv("SMSCREDITS_ACTOR", "tester")
    return db_url


def at_us(moment: datetime) -> int:
    return us(moment - EPOCH)


# -- co-processes on a clock of their own ----------------------------------------------


class Proc:
    """A process on the clock whose offset is in ``clock_file``, fed one line at a time and
    answering each with one JSON line; its stderr goes to a log."""

    def __init__(self, name: str, args: list[str], clock_file: Path, folder: Path) -> None:
        self.name = name
        self.log = folder / f"{name}.log"
        env = dict(os.environ)
        env[OFFSET_ENV] = f"@{clock_file}"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(WRAPPER), *args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, env=env)
        self.answers: list[Any] = []
        self.sent: list[Any] = []
        self.sent_us = 0  # when the last line was sent, on the host's clock

    def fileno(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def send(self, item: Any) -> None:
        assert self.proc.stdin is not None
        self.sent.append(item)
        self.sent_us = clock.now_us()
        self.proc.stdin.write(json.dumps(item).encode() + b"\n")
        self.proc.stdin.flush()

    def read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            pytest.fail(f"{self.name} died: {self.log.read_text()[-3000:]}")
        answer = json.loads(line, parse_float=Decimal)
        self.answers.append(answer)
        return answer

    def finish(self) -> int:
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout=TIMEOUT)


class Procs:
    """The processes a test starts, on two clocks (``behind`` and ``ahead``, offset files);
    whatever is left running at its end is killed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.behind, self.ahead = folder / "behind.offset", folder / "ahead.offset"
        self.set_clocks(0, 0)
        self.started: list[Proc] = []

    def set_clocks(self, behind: int, ahead: int) -> None:
        """Offsets (µs) from the host's clock; one write each, read whole by the processes."""
        for path, offset in ((self.behind, behind), (self.ahead, ahead)):
            write_offset(path, offset)

    def start(self, name: str, args: list[str], ahead: bool) -> Proc:
        proc = Proc(name, args, self.ahead if ahead else self.behind, self.folder)
        self.started.append(proc)
        return proc

    def streams(self, count: int) -> list[Proc]:
        """``charge --file -`` co-processes, every other one on the ahead clock."""
        return [self.start(f"stream{i}", ["charge", "--file", "-"], ahead=i % 2 == 1)
                for i in range(count)]

    def commands(self, name: str, ahead: bool) -> Proc:
        """smscredits commands run one after another in one process (JSON lists of args)."""
        return self.start(name, ["--each-line"], ahead)

    def kill(self) -> None:
        kill_left(p.proc for p in self.started)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    started = Procs(tmp_path)
    yield started
    started.kill()


def drive(procs: list[Proc], step: Callable[[Proc], Any]) -> None:
    """Each process gets ``step(it)`` (a line), answers, and gets its next while ``step``
    gives one (None: that process is done)."""
    open_: dict[int, Proc] = {}
    for p in procs:
        item = step(p)
        if item is not None:
            p.send(item)
            open_[p.fileno()] = p
    while open_:
        ready, _, _ = io_select.select(list(open_), [], [], TIMEOUT)
        if not ready:
            pytest.fail(f"no answer in {TIMEOUT} s")
        for fd in ready:
            p = open_[fd]
            p.read()
            item = step(p)
            if item is None:
                del open_[fd]
            else:
                p.send(item)


def warm_up(streams: list[Proc]) -> None:
    """Every stream up and answering (a line for a user that does not exist)."""
    drive(streams, lambda p: None if p.answers else {"user": "nobody", "to": TO, "parts": 1})
    for p in streams:
        p.answers.clear()
        p.sent.clear()


def hold_line(user: str, msg_id: str, parts: int, ttl: str | None = None) -> dict[str, Any]:
    line: dict[str, Any] = {"op": "hold", "user": user, "to": TO, "parts": parts, "id": msg_id}
    if ttl is not None:
        line["ttl"] = ttl
    return line


# -- what the journal says -------------------------------------------------------------


@dataclass
class Journal:
    """One account's events, oldest first: (id, at µs, kind, amount millis, ref, detail)."""

    rows: list[tuple[int, int, str, int | None, str | None, dict[str, Any]]]

    @classmethod
    def read(cls, url: str, user: str) -> Journal:
        db = open_db(url, actor="tester")
        try:
            with db.read() as conn:
                found = conn.execute(
                    select(events.c.id, events.c.at, events.c.kind, events.c.amount,
                           events.c.ref, events.c.detail)
                    .join(users, users.c.id == events.c.user_id)
                    .where(users.c.name == user, events.c.power_id.is_not(None))
                    .order_by(events.c.id)).all()
        finally:
            db.dispose()
        return cls([(r.id, r.at, r.kind, r.amount, r.ref, json.loads(r.detail or "{}"))
                    for r in found])

    def day_windows(self, zone: Any = BUDAPEST) -> dict[date, list[int]]:
        """Each local day's window counter (millis) after each event that moved it, by the
        rules: a charge or hold counts in its day; a settle, void, expiry or refund moves the
        day of its message's hold or charge by the difference, only on that same day."""
        days: dict[date, list[int]] = {}
        made: dict[str, tuple[date, int]] = {}  # ref: its day, the amount held or charged

        def move(day: date, delta: int) -> None:
            counter = days.setdefault(day, [0])
            counter.append(counter[-1] + delta)

        for _, at, kind, amount, ref, detail in self.rows:
            day = clock.from_us(at).astimezone(BUDAPEST).date()
            if kind == "message.charged":
                assert amount is not None and ref is not None
                made[ref] = (day, -amount)
                move(day, -amount)
            elif kind == "message.held":
                assert ref is not None
                held = _millis(detail["held"])
                made[ref] = (day, held)
                move(day, held)
            elif kind in RELEASES:
                assert ref is not None
                held_day, held = made[ref]
                taken = -(amount or 0)
                made[ref] = (held_day, taken)
                if held_day == day:
                    move(day, taken - held)
            elif kind == "message.refunded":
                assert amount is not None and ref is not None
                charged_day, _ = made[ref]
                if charged_day == day:
                    move(day, -amount)
        return days

    def ends(self) -> dict[str, list[str]]:
        """What happened to each message after it was held or charged."""
        found: dict[str, list[str]] = {}
        for _, _, kind, _, ref, _ in self.rows:
            if kind in (*RELEASES, "message.refunded") and ref is not None:
                found.setdefault(ref, []).append(kind)
        return found

    def held_refs(self) -> list[str]:
        return [ref for _, _, kind, _, ref, _ in self.rows
                if kind == "message.held" and ref is not None]


def _millis(text: str) -> int:
    return int(Decimal(text) * 1000)


def ledger_problems(cli: Cli, url: str, user: str, daily: int,
                    zone: Any = BUDAPEST) -> tuple[list[str], dict[date, int]]:
    """Every promise a round must keep, checked from the journal and the commands; what was
    found wrong, and each local day's highest window counter (credits)."""
    problems: list[str] = []
    book = Journal.read(url, user)
    windows = book.day_windows(zone)
    peaks = {day: max(steps) // 1000 for day, steps in windows.items()}
    for day, steps in sorted(windows.items()):
        if max(steps) > daily * 1000:
            problems.append(f"{day}: the day window reached {max(steps) / 1000} credits, "
                            f"over the daily {daily}")
        if min(steps) < 0:
            problems.append(f"{day}: the day window went below zero ({min(steps) / 1000})")
    for ref, times in Counter(book.held_refs()).items():
        if times > 1:
            problems.append(f"{ref} held {times} times")
    for ref, kinds in book.ends().items():
        released = [k for k in kinds if k in RELEASES]
        refunds = kinds.count("message.refunded")
        if len(released) > 1 or refunds > 1 or (refunds and not released):
            problems.append(f"{ref} ended more than once: {kinds}")
    shown = data(cli("limits", "show", user, "--json"))
    (day,) = [w for w in shown["windows"] if w["window"] == "day"]
    today = clock.now().astimezone(zone).date()
    journaled = Decimal(windows.get(today, [0])[-1]) / 1000
    if day["spent"] != journaled or day["spent"] > daily:
        problems.append(f"limits show: day spent {day['spent']} of {day['limit']} on {today}, "
                        f"the journal's {journaled}")
    account = data(cli("credits", "balance", user, "--json"))
    if account["balance"] - account["held"] + account["overdraft"] < 0 \
            or account["available"] != account["balance"] - account["held"] + account[
                "overdraft"]:
        problems.append(f"overdrawn or inconsistent: {account}")
    open_holds = data(cli("holds", "list", user, "--json"))
    if sum((h["held"] for h in open_holds), Decimal(0)) != account["held"]:
        problems.append(f"held {account['held']}, but the open holds are {open_holds}")
    problems.extend(verify_problems(cli("verify", "--json")))
    problems.extend(instants_out_of_order(url, user))
    return problems, peaks


# -- 1. holding and settling across midnight, two clocks --------------------------------

DAILY = 40  # credits; a hold is of two parts (2 credits) at 1 credit a part
STREAMS = 6
PREHELD = 16  # holds of 2 made before the round: the old day 32 of 40 full


@dataclass
class Round:
    user: str
    lines: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    peaks: dict[date, int] = field(default_factory=dict)
    full: bool = False
    reads: int = 0
    retries: int = 0


def hold_round(cli: Cli, url: str, procs: Procs, streams: list[Proc], reader: Proc,
               user: str, midnight: datetime, seed: int) -> Round:
    setup(cli, f"user add {user} --tz Europe/Budapest",
          f"power create {user} credits --initial 1000", f"limits set {user} --daily {DAILY}")
    # The old day nearly full, a few seconds before the round: open holds the streams then
    # settle (for fewer or more parts) or void on either side of midnight.
    before = midnight - LEAD - SKEW - timedelta(seconds=5)
    with shifted(us(before - clock.now())):
        done = ok(cli("charge", "--file", "-", input="".join(
            json.dumps(hold_line(user, f"{user}-pre{i}", 2)) + "\n" for i in range(PREHELD))))
    assert {r["status"] for r in done.jsonl()} == {"held"}
    pool = [f"{user}-pre{i}" for i in range(PREHELD)]  # open holds the streams act on
    rng = random.Random(seed)
    found = Round(user)
    base = us(midnight - LEAD - SKEW - clock.now())
    midnight_us = at_us(midnight)
    procs.set_clocks(base, base + us(SKEW))
    made = Counter[str]()
    running = set(streams)
    reader.sent.clear()
    reader.answers.clear()

    def step(p: Proc) -> Any:
        if p is reader:  # `limits show` again and again while the streams run
            return ["limits", "show", user, "--json"] if running else None
        if p.answers:  # what the last line did
            answer = p.answers[-1]
            status = answer["status"]
            found.answers[status if status != "rejected" else answer["reason"]] += 1
            if answer["replayed"]:
                found.answers["replayed"] += 1
            elif status == "held":
                pool.append(answer["id"])
            elif status == "rejected" and answer["reason"] == "daily_limit" \
                    and p.sent_us + base > midnight_us:
                found.full = True
        now = clock.now_us() + base  # the behind clocks
        if now >= midnight_us + us(TAIL) and (found.full or now > midnight_us + us(GIVE_UP)):
            running.discard(p)
            return None
        found.lines += 1
        if pool and rng.random() < 0.5:
            msg_id = rng.choice(pool)
            if rng.random() < 0.7:  # else another stream may act on it too: a race
                pool.remove(msg_id)
            kind = rng.choice(["fewer", "more", "same", "void"])
            if kind == "void":
                return {"op": "void", "id": msg_id}
            line: dict[str, Any] = {"op": "settle", "id": msg_id}
            if kind != "same":
                line["parts"] = 1 if kind == "fewer" else 3
            return line
        if made[p.name] and rng.random() < 0.1:  # a gateway retrying a hold: a replay
            found.retries += 1
            return hold_line(user, f"{user}-{p.name}-{rng.randint(1, made[p.name])}", 2)
        made[p.name] += 1
        return hold_line(user, f"{user}-{p.name}-{made[p.name]}", 2)

    drive([*streams, reader], step)
    found.reads = len(reader.answers)
    found.problems.extend(reads_going_back(reader, DAILY))
    if not found.full:
        found.problems.append(f"the new day was not full {GIVE_UP} after midnight")
    with shifted(base):  # just after the round, on the behind clock
        problems, found.peaks = ledger_problems(cli, url, user, DAILY)
        found.problems.extend(problems)
    return found


def reads_going_back(reader: Proc, daily: int) -> list[str]:
    """What `limits show` read beside the writers that breaks a promise: a day window over
    its limit, or one earlier than a window read before it (the window went back)."""
    problems: list[str] = []
    last = ""
    for answer in reader.answers:
        if answer["exit_code"] != 0:
            problems.append(f"limits show: {said(_Done(answer))}")
            continue
        shown = json.loads(answer["stdout"], parse_float=Decimal)
        (day,) = [w for w in shown["windows"] if w["window"] == "day"]
        if day["spent"] > daily or day["spent"] < 0:
            problems.append(f"limits show: day spent {day['spent']} of {daily}")
        if day["resets_at"] < last:
            problems.append(f"limits show: the day resetting at {day['resets_at']} read after "
                            f"the one resetting at {last}")
        last = max(last, day["resets_at"])
    return problems


def test_holds_settles_and_voids_across_midnight_on_two_clocks(
        cli: Cli, url: str, procs: Procs) -> None:
    setup(cli, "price set default 1")
    streams = procs.streams(STREAMS)
    reader = procs.commands("reader", ahead=False)
    warm_up(streams)
    midnights = [datetime(2031, 1, day, tzinfo=BUDAPEST) for day in (14, 15)]
    rounds = [hold_round(cli, url, procs, streams, reader, f"h{r}", midnight, seed=r)
              for r, midnight in enumerate(midnights)]
    assert [p.finish() for p in procs.started] == [0] * (STREAMS + 1)
    for r in rounds:
        print(f"\n{r.user}: {r.lines} lines, {dict(r.answers)}, {r.reads} reads of its "
              f"limits; day peaks {r.peaks}")
    for r, midnight in zip(rounds, midnights, strict=True):  # each round straddled midnight
        assert sorted(r.peaks) == [midnight.date() - timedelta(days=1), midnight.date()], r
        assert r.answers["settled"] and r.answers["voided"] and r.answers["replayed"], r
    broken = [r for r in rounds if r.problems]
    assert not broken, "\n".join(f"{r.user}: " + "\n  ".join(r.problems[:8]) for r in broken)


# -- 2. one hold, before midnight; its end, after ---------------------------------------

MIDNIGHT = datetime(2031, 1, 15, tzinfo=BUDAPEST)  # a Wednesday: only the day turns over
BEFORE = MIDNIGHT - timedelta(seconds=10)
AFTER = MIDNIGHT + timedelta(seconds=10)


def windows(cli: Cli, user: str = "alice") -> dict[str, Decimal]:
    return {w["window"]: w["spent"] for w in data(cli("limits", "show", user, "--json"))[
        "windows"]}


def held_yesterday(cli: Cli, *, parts: int, daily: int = 10, weekly: int = 100,
                   today: int = 0) -> None:
    """alice (Budapest, 100 credits, limits daily and weekly) holds ``m-1`` of ``parts``
    and is charged 2 more 10 s before midnight, and ``today`` credits 5 s after it."""
    setup(cli, "price set default 1", "user add alice --tz Europe/Budapest",
          "power create alice credits --initial 100",
          f"limits set alice --daily {daily} --weekly {weekly}")
    with freeze_time(BEFORE):
        assert data(cli("charge", "alice", "--to", TO, "--parts", str(parts), "--id", "m-1",
                        "--hold", "--json"))["status"] == "held"
        ok(cli("charge", "alice", "--to", TO, "--parts", "2", "--id", "c-1"))
        assert windows(cli) == {"day": parts + 2, "week": parts + 2, "month": parts + 2}
    if today:
        with freeze_time(MIDNIGHT + timedelta(seconds=5)):
            ok(cli("charge", "alice", "--to", TO, "--parts", str(today), "--id", "c-2"))


@pytest.mark.parametrize("today", [0, 9], ids=["nothing-today", "charged-today"])
@pytest.mark.parametrize("act", [["settle", "m-1", "--parts", "1"], ["void", "m-1"]],
                         ids=["settle-fewer", "void"])
def test_a_hold_ended_after_midnight_gives_back_to_its_own_day_only(
        cli: Cli, act: list[str], today: int) -> None:
    held_yesterday(cli, parts=3, today=today)
    with freeze_time(AFTER):
        result = data(cli(*act, "--json"))
        taken = 1 if act[0] == "settle" else 0
        assert (result["status"], result["cost"], result["held"]) == (
            "settled" if taken else "voided", taken, 3)
        # Yesterday keeps what the hold took; the week and month (still current) get back
        # the difference; today's day is untouched.
        assert windows(cli) == {"day": today, "week": 2 + taken + today,
                                "month": 2 + taken + today}
        assert data(cli("credits", "balance", "alice", "--json"))["balance"] == (
            100 - 2 - today - taken)
        # No room was made today: the day's limit still binds at 10.
        over = doc(cli("charge", "alice", "--to", TO, "--parts", str(10 - today + 1), "--id",
                       "c-3", "--json"))
        assert (over["status"], over["reason"]) == ("rejected", "daily_limit")
        fits = data(cli("charge", "alice", "--to", TO, "--parts", str(10 - today), "--id",
                        "c-4", "--json"))
        assert fits["status"] == "charged"
        assert windows(cli)["day"] == 10
        assert verify_problems(cli("verify", "--json")) == []


def test_a_hold_settled_for_fewer_parts_before_midnight_gives_back_to_that_day(
        cli: Cli) -> None:
    held_yesterday(cli, parts=3)
    with freeze_time(BEFORE + timedelta(seconds=5)):
        assert data(cli("settle", "m-1", "--parts", "1", "--json"))["cost"] == 1
        assert windows(cli) == {"day": 3, "week": 3, "month": 3}
    with freeze_time(AFTER):
        assert windows(cli) == {"day": 0, "week": 3, "month": 3}
        assert verify_problems(cli("verify", "--json")) == []


@pytest.mark.parametrize("today", [0, 10], ids=["nothing-today", "day-full-today"])
def test_a_hold_settled_for_more_parts_after_midnight_is_not_counted_in_the_new_day(
        cli: Cli, today: int) -> None:
    """The hold's day has ended: the extra counts only in the windows it was counted in that
    are still current (the week, the month). A new day already at its limit does not make it
    ``settled_at_held``, and is not moved."""
    held_yesterday(cli, parts=1, today=today)
    with freeze_time(AFTER):
        result = data(cli("settle", "m-1", "--parts", "3", "--json"))
        assert (result["status"], result["reason"], result["cost"], result["parts"]) == (
            "settled", None, 3, 3)
        assert windows(cli) == {"day": today, "week": 2 + 3 + today, "month": 2 + 3 + today}
        assert data(cli("credits", "balance", "alice", "--json"))["balance"] == (
            100 - 2 - today - 3)
        assert verify_problems(cli("verify", "--json")) == []


def test_a_hold_settled_for_more_parts_after_midnight_is_held_to_the_weekly_limit(
        cli: Cli) -> None:
    """The week is still current: its limit binds the extra, and the hold is settled at what
    it held (``settled_at_held``), moving no window."""
    held_yesterday(cli, parts=1, weekly=6, today=2)  # the week: 1 + 2 + 2 of 6
    with freeze_time(AFTER):
        result = doc(cli("settle", "m-1", "--parts", "3", "--json"))
        assert (result["status"], result["reason"], result["cost"]) == (
            "settled", "settled_at_held", 1)
        assert windows(cli) == {"day": 2, "week": 5, "month": 5}
        assert data(cli("credits", "balance", "alice", "--json"))["balance"] == 100 - 5
        assert verify_problems(cli("verify", "--json")) == []


def test_a_retried_hold_of_a_settled_and_refunded_message_is_not_called_charged(
        cli: Cli) -> None:
    """A gateway retrying a hold after midnight, once its message was settled and refunded:
    it replays (nothing held or taken), and tells what the hold became, never ``charged``."""
    held_yesterday(cli, parts=3)
    with freeze_time(BEFORE + timedelta(seconds=1)):
        ok(cli("settle", "m-1"))
    with freeze_time(AFTER):
        assert data(cli("void", "m-1", "--json"))["status"] == "refunded"
        again = data(cli("charge", "alice", "--to", TO, "--parts", "3", "--id", "m-1",
                         "--hold", "--json"))
        assert again["replayed"] is True
        assert data(cli("credits", "balance", "alice", "--json"))["held"] == 0
        assert again["status"] in ("settled", "refunded"), again


# -- 3. readers beside writers -----------------------------------------------------------

WRITERS = 3  # charge streams; with the expiry loop, four writers
READS = 12  # rounds of verify, credits balance and holds list
READER_USERS = ("r0", "r1")


def test_reads_beside_hold_writers_across_midnight_are_consistent(
        cli: Cli, url: str, procs: Procs) -> None:
    setup(cli, "price set default 1")
    for user in READER_USERS:
        setup(cli, f"user add {user} --tz Europe/Budapest",
              f"power create {user} credits --initial 300 --overdraft 5",
              f"limits set {user} --daily 250")
    streams = procs.streams(WRITERS)
    expirer = procs.commands("expirer", ahead=True)
    reader = procs.commands("reader", ahead=False)
    warm_up(streams)
    midnight = datetime(2031, 1, 16, tzinfo=BUDAPEST)
    base = us(midnight - LEAD - SKEW - clock.now())
    procs.set_clocks(base, base + us(SKEW))
    rng = random.Random(7)
    pool: list[str] = []
    reads = [cmd for _ in range(READS) for user in READER_USERS for cmd in (
        ["verify", "--json"], ["credits", "balance", user, "--json"],
        ["holds", "list", user, "--json"])]
    counts = Counter[str]()

    def step(p: Proc) -> Any:
        if p is reader:
            return reads[len(p.sent)] if len(p.sent) < len(reads) else None
        reading = len(reader.answers) < len(reads)
        if p is expirer:
            return ["holds", "expire", "--json"] if reading else None
        if p.answers:
            answer = p.answers[-1]
            counts[answer["status"] if answer["status"] != "rejected" else answer["reason"]] \
                += 1
            if answer["status"] == "held":
                pool.append(answer["id"])
        if not reading:
            return None
        if pool and rng.random() < 0.3:
            msg_id = pool.pop(rng.randrange(len(pool)))
            return rng.choice([{"op": "settle", "id": msg_id},
                               {"op": "settle", "id": msg_id, "parts": 1},
                               {"op": "void", "id": msg_id}])
        return hold_line(rng.choice(READER_USERS), f"{p.name}-{len(p.sent)}", 2, ttl="1s")

    drive([*streams, expirer, reader], step)
    codes = [p.finish() for p in procs.started]
    assert codes == [0] * len(codes)
    alarms: list[str] = []
    for args, answer in zip(reader.sent, reader.answers, strict=True):
        if answer["exit_code"] != 0:
            alarms.append(f"{args}: {said(_Done(answer))}")
        elif args[0] == "verify":
            alarms.extend(f"{args}: {p}" for p in verify_problems(_Done(answer)))
        elif args[0] == "credits":
            acc = json.loads(answer["stdout"], parse_float=Decimal)
            if not (acc["held"] >= 0 and acc["available"] >= 0 and acc["available"] == (
                    acc["balance"] - acc["held"] + acc["overdraft"])):
                alarms.append(f"{args}: {acc}")
        else:
            for h in json.loads(answer["stdout"], parse_float=Decimal):
                if h["held"] <= 0 or h["user"] != args[2]:
                    alarms.append(f"{args}: {h}")
    expired = sum(len(json.loads(a["stdout"])) for a in expirer.answers if a["exit_code"] == 0)
    print(f"\n{len(reader.answers)} reads beside {WRITERS} streams ({dict(counts)}) and "
          f"{len(expirer.answers)} expiry runs ({expired} expired): {len(alarms)} alarms")
    assert all(a["exit_code"] == 0 for a in expirer.answers), expirer.answers[-1]
    assert not alarms, "\n".join(alarms[:10])
    assert counts["held"] and (counts["settled"] or counts["voided"]), counts
    with shifted(base + us(SKEW)):
        for user in READER_USERS:
            problems, _ = ledger_problems(cli, url, user, 250)
            assert not problems, (user, problems)


@dataclass
class _Done:
    """A command's answer from an ``--each-line`` process, as ``said`` and
    ``verify_problems`` read it."""

    answer: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return int(self.answer["exit_code"])

    @property
    def stdout(self) -> str:
        return str(self.answer["stdout"])

    @property
    def stderr(self) -> str:
        return str(self.answer["stderr"])

    def json(self) -> Any:
        return json.loads(self.stdout)


# -- 4. two `holds expire` at once, across midnight ---------------------------------------

GROUP = 12  # holds in each group
# Each round both crons run `holds expire` at once, on clocks CRON_SKEW apart (less than a
# STEP, so that both first find a group due in the same round); then the clocks move on.
CRON_SKEW = timedelta(seconds=1)
STEP = timedelta(seconds=1.5)
FIRST = timedelta(seconds=-3.5)  # the behind clock's first round, from midnight
# Each group: when its holds are made and their ttl (from midnight), and so when they are
# due: before either clock's first round; in the round where the behind clock is still
# before midnight and the ahead one past it (-0.5 s and +0.5 s); after midnight on both.
GROUPS = {"early": (-4.75, 1), "straddling": (-4.6, 4), "late": (-4.1, 5)}
EXPIRY_ROUNDS = 5


def expire_once_more(p: Proc, runs: int) -> list[str] | None:
    """`holds expire`, until ``p`` has run it ``runs`` times."""
    return ["holds", "expire", "--json"] if len(p.sent) < runs else None


@pytest.mark.parametrize("expiry", ["settle", "void"])
def test_two_expiry_runs_across_midnight_expire_each_hold_once(
        cli: Cli, url: str, procs: Procs, expiry: str) -> None:
    setup(cli, "price set default 1", f"config set hold_expiry {expiry}",
          "user add e --tz Europe/Budapest", "power create e credits --initial 100",
          "limits set e --daily 40")
    midnight = datetime(2031, 1, 17, tzinfo=BUDAPEST)
    for group, (made, ttl) in GROUPS.items():
        with freeze_time(midnight + timedelta(seconds=made)):
            done = ok(cli("charge", "--file", "-", input="".join(
                json.dumps(hold_line("e", f"{group}-{i}", 1, ttl=f"{ttl}s")) + "\n"
                for i in range(GROUP))))
        assert {r["status"] for r in done.jsonl()} == {"held"}
    crons = [procs.commands("cron-behind", ahead=False), procs.commands("cron-ahead",
                                                                        ahead=True)]
    drive(crons, lambda p: None if p.sent else ["holds", "list", "--json"])  # both up
    for p in crons:
        p.sent.clear()
        p.answers.clear()
    charged_today = False
    for r in range(EXPIRY_ROUNDS):
        behind = midnight + FIRST + STEP * r
        offset = us(behind - clock.now())
        if not charged_today and behind >= midnight:
            # Today opened by a charge before the late group ends (the straddling group
            # ended before any event of today), on the ahead clock.
            with shifted(offset):
                ok(cli("charge", "e", "--to", TO, "--parts", "5", "--id", "today"))
            charged_today = True
        procs.set_clocks(offset, offset + us(CRON_SKEW))
        drive(crons, functools.partial(expire_once_more, runs=r + 1))
    assert [p.finish() for p in crons] == [0, 0]
    ended: list[str] = []
    per_round: list[list[int]] = []
    for p in crons:
        per_round.append([])
        for answer in p.answers:
            assert answer["exit_code"] == 0, said(_Done(answer))
            results = json.loads(answer["stdout"])
            assert {(x["status"], x["reason"]) for x in results} <= {
                ("settled" if expiry == "settle" else "voided", "expired")}, results
            ended += [x["id"] for x in results]
            per_round[-1].append(len(results))
    book = Journal.read(url, "e")
    assert sorted(ended) == sorted(book.held_refs())  # each by one run, once
    assert all(kinds == ["message.expired"] for kinds in book.ends().values()), book.ends()
    assert sorted(book.ends()) == sorted(book.held_refs())
    taken = 3 * GROUP if expiry == "settle" else 0
    with shifted(us(midnight + FIRST + STEP * EXPIRY_ROUNDS - clock.now())):
        account = data(cli("credits", "balance", "e", "--json"))
        assert (account["balance"], account["held"]) == (100 - 5 - taken, 0)
        # Today has the charge alone: yesterday's holds, ended today, are not in it.
        assert windows(cli, "e")["day"] == 5
        problems, peaks = ledger_problems(cli, url, "e", 40)
    print(f"\nexpiry {expiry}: expired per round by the behind cron {per_round[0]}, by the "
          f"ahead one {per_round[1]}; day peaks {peaks}")
    assert not problems, problems
