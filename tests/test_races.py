"""Races between real `smscredits` processes, on SQLite and Postgres.

Gateway code keeps `smscredits charge --file -` co-processes open and feeds each one line at
a time (a line, its result, the next line); admin commands, `verify` and `refill run` run
beside them. These tests do the same with the installed console script, for the promises a
race could break:

- a daily limit holds across the user's local midnight, with many processes on one clock
  and with hosts whose clocks differ by seconds (each process's clock comes from
  ``tests/shifted_clock.py``: real time plus an offset, so it runs on in real time), and an
  account's events never go back in time;
- `power overdraft` while charging keeps every account's hash chain whole;
- `user set-tz` while charging leaves every window counter as the journal has it;
- `verify` on a live ledger never reports a problem that is not there;
- `refill cancel` during a long `refill run` stops it: nothing is applied after the cancel.

The commands beside the chargers run one after another in one process of their own
(``shifted_clock.py --each-line``), `refill run` and `refill cancel` each in its own. Nothing
sleeps: co-processes are fed until their own clock passes a chosen instant and the day's
limit has been met, or until the commands beside them are done; a poll reads the journal
until the awaited event is in it. Set-up and the checks afterwards run in-process (``cli``),
the checks of a round on that round's clock. Every round's findings are collected and
reported together; run with ``-s`` to see each round's figures.
"""

from __future__ import annotations

import itertools
import json
import os
import select as io_select
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from smscredits import clock
from smscredits.storage.engine import open_db
from smscredits.storage.tables import events, users
from tests.helpers import kill_left
from tests.shifted_clock import OFFSET_ENV

pytestmark = pytest.mark.race

Cli = Callable[..., Any]  # conftest's ``cli``: smscredits ARGS in-process, a ``Run``

WRAPPER = Path(__file__).with_name("shifted_clock.py")
TIMEOUT = 120  # seconds without an answer before a process counts as hung
TO = "+36301234567"
BUDAPEST = ZoneInfo("Europe/Budapest")
# Budapest midnights in the future (set-up events, stamped now, stay earlier), one a round,
# mid-week and mid-month: only the day window turns over at them.
MIDNIGHTS = [datetime(2031, 1, day, tzinfo=BUDAPEST) for day in (14, 15, 16)]
DAILY = 300  # the limit, in credits: one charge of one part costs 1
PROCESSES = 8  # charging co-processes in the midnight rounds on one clock ...
SKEWED_PROCESSES = 4  # ... and on two (a race is not needed there)
PRECHARGED = DAILY - 16  # charged on the old day before a round (see ``precharge``)
ROUNDS = len(MIDNIGHTS)
LEAD = timedelta(seconds=0.5)  # the clocks start this long before midnight ...
TAIL = timedelta(seconds=0.5)  # ... the lines go on at least this long after it ...
GIVE_UP = timedelta(seconds=30)  # ... and at most this long (then the round failed)
SKEW = timedelta(seconds=3)  # how far ahead half the hosts' clocks are, in the skewed rounds
CHARGERS = 3  # charging co-processes beside the overdraft changes and beside verify
CHANGES = 12  # overdraft changes per round
VERIFIES = 20


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us(span: timedelta) -> int:
    return span // timedelta(microseconds=1)


def console_script() -> str:
    """The installed `smscredits` beside this Python (a virtualenv's bin), else on PATH."""
    here = Path(sys.executable).with_name("smscredits")
    found = str(here) if here.exists() else shutil.which("smscredits")
    if found is None:
        pytest.fail("the smscredits console script is not installed")
    return found


def argv(*args: str, offset: str | None = None) -> list[str]:
    """The command line of ``smscredits ARGS``; with ``offset`` (the wrapper's setting),
    on a moved clock."""
    return [console_script(), *args] if offset is None else [sys.executable, str(WRAPPER), *args]


def child_env(offset: str | None = None) -> dict[str, str]:
    """The test's settings (conftest's isolated config, SMSCREDITS_DB, SMSCREDITS_ACTOR)."""
    env = dict(os.environ)
    env.pop(OFFSET_ENV, None)
    if offset is not None:
        env[OFFSET_ENV] = offset
    return env


@pytest.fixture
def url(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test's database (each engine), set for every process the test starts."""
    monkeypatch.setenv("SMSCREDITS_DB", db_url)
    monkeypatch.setenv("SMSCREDITS_ACTOR", "tester")
    return db_url


@dataclass
class Done:
    """A finished command of its own process."""

    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run(*args: str) -> Done:
    """``smscredits ARGS`` in a process of its own."""
    cmd = argv(*args)
    p = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=TIMEOUT,
                       check=False)
    return Done(cmd, p.returncode, p.stdout, p.stderr)


def said(result: Any) -> str:
    return f"exit {result.exit_code}: {(result.stdout + result.stderr).strip()[-600:]}"


@contextmanager
def shifted(offset: int) -> Iterator[None]:
    """In-process commands on the clock of tests/shifted_clock.py: real time plus ``offset``
    microseconds."""
    real_now = clock.now
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clock, "now", lambda: real_now() + timedelta(microseconds=offset))
        yield


def setup(cli: Cli, *commands: str) -> None:
    for command in commands:
        done = cli(*command.split())
        assert done.exit_code == 0, said(done)


def journal(cli: Cli, user: str, *kinds: str) -> list[dict[str, Any]]:
    """``events USER --json`` (of these kinds): every row, oldest first."""
    args = ["events", user, "--json", "--limit", "100000"]
    for kind in kinds:
        args += ["--kind", kind]
    done = cli(*args)
    assert done.exit_code == 0, said(done)
    rows = done.json()
    assert len(rows) < 100000, "more events than one page: page on with --before"
    return sorted(rows, key=lambda e: e["id"])


def verify_problems(result: Any, user: str | None = None) -> list[str]:
    """What a `verify --json` run says is wrong (of ``user``'s account, if given); nothing
    when it exits 0 with no problem."""
    try:
        report = result.json()
    except ValueError:
        return [said(result)]
    found = [f"{p['check']} {p['user']}: {p['detail']} (expected {p.get('expected')}, found "
             f"{p.get('found')}, event {p.get('event_id')})"
             for p in report.get("problems", ()) if user in (None, p["user"])]
    failed = result.exit_code != 0 or not report.get("ok")
    if failed and (found or user is None or not report.get("problems")):
        found.insert(0, said(result) if "problems" not in report else
                     f"verify exit {result.exit_code}")
    return found


def instants_out_of_order(url: str, user: str) -> list[str]:
    """Where an account's event instant (to the microsecond) is earlier than its previous
    event's (by id): a window moved backwards."""
    db = open_db(url, actor="tester")
    try:
        with db.read() as conn:
            rows = conn.execute(
                select(events.c.id, events.c.at).join(users, users.c.id == events.c.user_id)
                .where(users.c.name == user, events.c.power_id.is_not(None))
                .order_by(events.c.id)).all()
    finally:
        db.dispose()
    return [f"event {b.id} at {clock.from_us(b.at).isoformat()} follows event {a.id} at "
            f"{clock.from_us(a.at).isoformat()}" for a, b in itertools.pairwise(rows)
            if b.at < a.at]


def parse_at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# -- co-processes ----------------------------------------------------------------------


class LineProcess:
    """A process fed one line at a time on stdin, answering each with one line on stdout;
    its stderr goes to ``log``."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, env=env)

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read(self) -> bytes:
        line = self.stdout.readline()
        if not line:
            self.fail("died")
        return line

    def end_input(self) -> None:
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()

    def finish(self) -> int:
        """End its input; its exit code."""
        self.end_input()
        try:
            return self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("did not end")
            raise

    def fail(self, what: str) -> None:
        self.proc.kill()
        pytest.fail(f"{' '.join(self.proc.args[-3:])} {what}: {self.log.read_text()[-3000:]}")


class Charger(LineProcess):
    """A `smscredits charge --file -` co-process; with ``offset``, on the clock of
    tests/shifted_clock.py (``@FILE``: the offset in FILE)."""

    def __init__(self, log: Path, offset: str | None = None) -> None:
        super().__init__(argv("charge", "--file", "-", offset=offset), log, child_env(offset))
        self.answers: Counter[str] = Counter()  # "charged", or the reason of a refusal
        self.last = ""  # the last answer
        self.sent_us = 0  # when the last line was sent (the host's clock)
        self.lines: Callable[[], bytes] = lambda: b""

    def send_line(self) -> None:
        self.sent_us = clock.now_us()
        self.send(self.lines())

    def take_answer(self) -> None:
        result = json.loads(self.read())
        self.last = result["status"] if result["status"] == "charged" else result["reason"]
        self.answers[self.last] += 1


class Commands(LineProcess):
    """smscredits commands run one after another in one process (``shifted_clock.py
    --each-line``) while the chargers charge."""

    def __init__(self, log: Path) -> None:
        super().__init__([sys.executable, str(WRAPPER), "--each-line"], log, child_env())
        self.waiting: list[list[str]] = []
        self.done: list[Done] = []
        self.busy = False

    def queue(self, commands: list[list[str]]) -> None:
        self.waiting, self.done = list(commands), []

    @property
    def over(self) -> bool:
        return not self.waiting and not self.busy

    def send_next(self) -> None:
        if self.waiting:
            self.send(json.dumps(self.waiting[0]).encode() + b"\n")
            self.busy = True

    def take_answer(self) -> None:
        answer = json.loads(self.read())
        self.done.append(Done(self.waiting.pop(0), **answer))
        self.busy = False


class Processes:
    """The processes a test starts; whatever is left running at its end is killed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[LineProcess] = []

    def chargers(self, count: int, offset: str | None = None) -> list[Charger]:
        batch = [Charger(self.folder / f"charger{len(self.started) + i}.log", offset)
                 for i in range(count)]
        self.started.extend(batch)
        return batch

    def commands(self) -> Commands:
        loop = Commands(self.folder / "commands.log")
        self.started.append(loop)
        return loop

    def kill(self) -> None:
        kill_left(p.proc for p in self.started)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.kill()


def finish(processes: Sequence[LineProcess]) -> list[int]:
    """End every one's input (they wind down together); their exit codes."""
    for p in processes:
        p.end_input()
    return [p.finish() for p in processes]


def feed(chargers: list[Charger], more: Callable[[Charger], bool],
         commands: Commands | None = None) -> None:
    """Each charger gets a line, answers, and gets its next line while ``more(it)``, and
    while ``commands`` has commands to run: they start once every charger has answered
    (all are up), and run one after another."""
    open_: dict[int, Charger] = {c.stdout.fileno(): c for c in chargers}
    for c in chargers:
        c.send_line()
    waiting = commands is not None
    while open_:
        watched = [*open_, *([commands.stdout.fileno()] if commands and commands.busy else [])]
        ready, _, _ = io_select.select(watched, [], [], TIMEOUT)
        if not ready:
            pytest.fail(f"no answer in {TIMEOUT} s")
        for fd in ready:
            if commands is not None and fd == commands.stdout.fileno():
                commands.take_answer()
                commands.send_next()
                continue
            c = open_[fd]
            c.take_answer()
            if more(c) or (commands is not None and not commands.over):
                c.send_line()
            else:
                del open_[fd]
        if commands is not None and waiting and all(c.answers for c in chargers):
            waiting = False
            commands.send_next()


def charge_line(user: str) -> bytes:
    return json.dumps({"user": user, "to": TO, "parts": 1}).encode() + b"\n"


# -- 1. a daily limit across local midnight --------------------------------------------


@dataclass
class Round:
    """What one midnight round did, and what was found wrong after it."""

    user: str
    midnight: datetime
    processes: int
    lines: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    per_day: dict[date, int] = field(default_factory=dict)  # credits charged, by local day
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0  # charging

    def __str__(self) -> str:
        days = ", ".join(f"{d}: {n}" for d, n in sorted(self.per_day.items()))
        return (f"{self.user}: {self.processes} processes, {self.lines} lines in "
                f"{self.seconds:.1f} s, {dict(self.answers)}; charged per local day {days}")


def midnight_round(cli: Cli, url: str, user: str, midnight: datetime, chargers: list[Charger],
                   clocks: tuple[Path, Path], skew: timedelta) -> Round:
    """The co-processes charge ``user`` (a daily limit, in Budapest) one line at a time, from
    LEAD before its midnight until the new day is full. ``clocks``: the offset files of the
    behind and the ahead co-processes, which are ``skew`` apart."""
    setup(cli, f"user add {user} --tz Europe/Budapest",
          f"power create {user} credits --initial 100000", f"limits set {user} --daily {DAILY}")
    # The old day all but full beforehand (a few seconds before the round), so that it is
    # full before midnight however slow the machine: what a late stamp then gets past its
    # limit is over it.
    precharge(cli, user, us(midnight - LEAD - skew - timedelta(seconds=5) - clock.now()))
    for c in chargers:
        c.lines = lambda: charge_line(user)
        c.answers.clear()
    # The clocks start now: the behind ones LEAD + skew before midnight, the others skew
    # later. The lines go on until the behind clocks are TAIL past midnight and a line sent
    # after midnight on every clock was refused for the daily limit (the new day is full).
    base = us(midnight - LEAD - skew - clock.now())
    for path, offset in zip(clocks, (base, base + us(skew)), strict=True):
        path.write_text(f"{offset:24d}")  # one write: a process reads it whole
    midnight_us, full = us(midnight - EPOCH), False

    def more(c: Charger) -> bool:
        nonlocal full
        full = full or (c.last == "daily_limit" and c.sent_us + base > midnight_us)
        now = clock.now_us() + base
        return now < midnight_us + us(TAIL) or (not full and now < midnight_us + us(GIVE_UP))

    started = time.monotonic()
    feed(chargers, more)
    found = Round(user, midnight, len(chargers), seconds=time.monotonic() - started)
    for c in chargers:
        found.lines += c.answers.total()
        found.answers.update(c.answers)
    if not full:
        found.problems.append(f"the new day was not full {GIVE_UP} after midnight")
    with shifted(base):  # just after the round, on its clock
        check_midnight(cli, url, found)
    return found


def precharge(cli: Cli, user: str, offset: int) -> None:
    """Charge the user PRECHARGED credits on the clock ``offset`` ahead."""
    with shifted(offset):
        done = cli("charge", "--file", "-", input=charge_line(user).decode() * (
            PRECHARGED))
    assert done.exit_code == 0, said(done)
    assert {r["status"] for r in done.jsonl()} == {"charged"}, said(done)


def check_midnight(cli: Cli, url: str, found: Round) -> None:
    """Each local day's charges within the limit; the account's instants in id order;
    `limits show` and `verify` agree with the journal."""
    for e in journal(cli, found.user, "message.charged"):
        day = parse_at(e["at"]).astimezone(BUDAPEST).date()
        found.per_day[day] = found.per_day.get(day, 0) - int(e["amount"])
    for day, spent in sorted(found.per_day.items()):
        if spent > DAILY:
            found.problems.append(f"{day}: {spent} credits charged, over the daily {DAILY}")
    shown = cli("limits", "show", found.user, "--json")
    (day,) = [w for w in shown.json()["windows"] if w["window"] == "day"]
    journaled = found.per_day.get(found.midnight.date(), 0)
    if day["spent"] != journaled or day["spent"] > DAILY:
        found.problems.append(f"limits show: day spent {day['spent']} of {day['limit']}, "
                              f"the journal's {journaled}")
    found.problems.extend(verify_problems(cli("verify", "--json"), found.user))
    found.problems.extend(instants_out_of_order(url, found.user))


def midnight_rounds(cli: Cli, url: str, processes: Processes, count: int, skew: timedelta,
                    prefix: str) -> None:
    """ROUNDS rounds of ``count`` co-processes (started once, and set going by a line for a
    user that does not exist); every other one on the ahead clock."""
    setup(cli, "price set default 1")
    clocks = (processes.folder / "behind.offset", processes.folder / "ahead.offset")
    for path in clocks:
        path.write_text("0")
    chargers = [c for _ in range(count // 2) for c in (
        *processes.chargers(1, f"@{clocks[0]}"), *processes.chargers(1, f"@{clocks[1]}"))]
    for c in chargers:
        c.lines = lambda: charge_line("nobody")
    feed(chargers, lambda c: False)
    rounds = [midnight_round(cli, url, f"{prefix}{r}", midnight, chargers, clocks, skew)
              for r, midnight in enumerate(MIDNIGHTS)]
    assert finish(chargers) == [0] * len(chargers)
    for r in rounds:
        print(f"\n{r}")
    for r in rounds:  # each round straddled midnight
        assert sorted(r.per_day) == [r.midnight.date() - timedelta(days=1), r.midnight.date()], r
    broken = [r for r in rounds if r.problems]
    assert not broken, (f"{len(broken)} of {len(rounds)} rounds broke a promise:\n" + "\n".join(
        f"{r}\n  " + "\n  ".join([*r.problems[:6], f"({len(r.problems)} in all)"])
        for r in broken))


def test_daily_limit_holds_across_midnight_with_many_processes(
        cli: Cli, url: str, processes: Processes) -> None:
    midnight_rounds(cli, url, processes, PROCESSES, timedelta(0), "m")


def test_daily_limit_holds_across_midnight_with_skewed_clocks(
        cli: Cli, url: str, processes: Processes) -> None:
    midnight_rounds(cli, url, processes, SKEWED_PROCESSES, SKEW, "s")


# -- 3. `power overdraft` while charging -----------------------------------------------


def test_overdraft_changes_while_charging_keep_the_chain(
        cli: Cli, url: str, processes: Processes) -> None:
    setup(cli, "price set default 1")
    chargers, commands = processes.chargers(CHARGERS), processes.commands()
    broken: list[str] = []
    for r in range(ROUNDS):
        user = f"o{r}"
        setup(cli, f"user add {user}", f"power create {user} credits --initial 100000")
        for c in chargers:
            c.lines = lambda user=user: charge_line(user)
            c.answers.clear()
        values = itertools.islice(itertools.cycle(["5", "unlimited", "0"]), CHANGES)
        commands.queue([["power", "overdraft", user, v] for v in values])
        feed(chargers, lambda c: False, commands)
        for done in commands.done:
            assert done.exit_code == 0, said(done)
        charged = sum(c.answers["charged"] for c in chargers)
        problems = verify_problems(cli("verify", "--json"), user)
        print(f"\nround {r}: {CHARGERS} processes charged {charged} times during "
              f"{len(commands.done)} overdraft changes; verify: {problems or 'ok'}")
        if problems:
            broken.append(f"round {r}: " + "; ".join(problems))
    assert finish([*chargers, commands]) == [0] * (CHARGERS + 1)
    assert not broken, f"{len(broken)} of {ROUNDS} rounds:\n" + "\n".join(broken)


def test_zone_changes_while_charging_keep_every_window_true(
        cli: Cli, url: str, processes: Processes) -> None:
    """`user set-tz` recounts the open windows while co-processes charge the same account:
    no charge may count in the old zone's windows beside the new zone's counters."""
    setup(cli, "price set default 1")
    chargers, commands = processes.chargers(CHARGERS), processes.commands()
    broken: list[str] = []
    for r in range(ROUNDS):
        user = f"z{r}"
        setup(cli, f"user add {user}", f"power create {user} credits --initial 100000",
              f"limits set {user} --daily 100000")
        for c in chargers:
            c.lines = lambda user=user: charge_line(user)
            c.answers.clear()
        # Half as many as the overdraft rounds: each change recounts a journal that grows.
        zones = itertools.islice(itertools.cycle(
            ["Pacific/Auckland", "America/Los_Angeles", "UTC"]), CHANGES // 2)
        commands.queue([["user", "set-tz", user, z] for z in zones])
        feed(chargers, lambda c: False, commands)
        for done in commands.done:
            assert done.exit_code == 0, said(done)
        charged = sum(c.answers["charged"] for c in chargers)
        problems = verify_problems(cli("verify", "--json"), user)
        print(f"\nround {r}: {CHARGERS} processes charged {charged} times during "
              f"{len(commands.done)} zone changes; verify: {problems or 'ok'}")
        if problems:
            broken.append(f"round {r}: " + "; ".join(problems))
    assert finish([*chargers, commands]) == [0] * (CHARGERS + 1)
    assert not broken, f"{len(broken)} of {ROUNDS} rounds:\n" + "\n".join(broken)


# -- 4. `verify` on a live ledger ------------------------------------------------------


def test_verify_on_a_live_ledger_raises_no_false_alarm(
        cli: Cli, url: str, processes: Processes) -> None:
    names = ["v0", "v1", "v2"]
    setup(cli, "price set default 1")
    for user in names:
        setup(cli, f"user add {user} --tz Europe/Budapest",
              f"power create {user} credits --initial 1000000",
              f"limits set {user} --daily 900000 --weekly 900000 --monthly 900000")
    chargers, commands = processes.chargers(CHARGERS), processes.commands()
    turn = itertools.cycle(names)
    for c in chargers:
        c.lines = lambda: charge_line(next(turn))
    commands.queue([["verify", "--json"]] * VERIFIES)
    feed(chargers, lambda c: False, commands)
    assert finish([*chargers, commands]) == [0] * (CHARGERS + 1)
    alarms = [f"verify {i + 1}: " + "; ".join(p) for i, done in enumerate(commands.done)
              if (p := verify_problems(done))]
    charged = sum(c.answers["charged"] for c in chargers)
    print(f"\n{VERIFIES} verify runs during {charged} charges by {CHARGERS} processes: "
          f"{len(alarms)} reported problems")
    assert not alarms, f"{len(alarms)} of {VERIFIES} verify runs:\n" + "\n".join(alarms)
    assert verify_problems(cli("verify", "--json")) == []


# -- 2. `refill cancel` during `refill run` --------------------------------------------


def test_refill_cancel_during_a_run_stops_it(cli: Cli, url: str, tmp_path: Path) -> None:
    setup(cli, "user add p", "power create p credits")
    plan = cli("refill", "schedule", "p", "--every", "day", "--add", "5", "--json").json()["id"]
    ahead = str(us(timedelta(days=3000)))
    with (tmp_path / "run.out").open("w+") as out:
        runner = subprocess.Popen(argv("refill", "run", offset=ahead), stdout=out,
                                  stderr=subprocess.STDOUT, env=child_env(ahead))
        # As soon as the run has applied a period, cancel the plan from another process.
        while runner.poll() is None and not cli(
                "events", "p", "--kind", "refill.applied", "--limit", "1", "--json").json():
            pass
        cancel = run("refill", "cancel", str(plan))
        code = runner.wait(timeout=TIMEOUT)
        out.seek(0)
        assert code == 0, out.read()[-2000:]
    assert cancel.exit_code == 0, said(cancel)
    rows = journal(cli, "p", "refill.applied", "refill.cancelled")
    (cancelled,) = [e["id"] for e in rows if e["kind"] == "refill.cancelled"]
    applied = [e["id"] for e in rows if e["kind"] == "refill.applied"]
    late = [i for i in applied if i > cancelled]
    balance = cli("credits", "balance", "p", "--json").json()["balance"]
    print(f"\nrefill run 3000 days ahead: {len(applied)} periods applied, {len(late)} of them "
          f"after the cancel (event {cancelled}); balance {balance}")
    assert 0 < len(applied) - len(late) < 3000, "the cancel came after the run: no race"
    assert late == [], f"{len(late)} refill.applied events after the cancel (event {cancelled})"
    assert balance == 5 * len(applied)
    assert verify_problems(cli("verify", "--json")) == []
