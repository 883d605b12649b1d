"""Benchmark of smscredits, each figure against a baseline measured in the same run.

    python bench/run.py [--quick] [--pg URL] [--out results.json] [--profile]

Creates its own databases in a temporary directory (and, with a Postgres URL from ``--pg`` or
``$SMSCREDITS_TEST_PG``, its own schemas, dropped at the end) and prints one table:

1. bulk ``charge --file`` on SQLite vs a plain ``sqlite3`` loop doing UPDATE + INSERT;
2. the same on Postgres vs a plain psycopg loop in pipeline mode (1 and 2: the median of
   three alternated runs of each side);
3. streaming latency of ``charge --file -`` fed one line at a time vs an echo co-process;
4. charge cost with a big journal (10M events) vs a small one (1k events);
5. cold start of ``--help``, ``--version``, ``credits balance``, ``log`` vs bare imports;
6. ``log USER --limit 50`` and ``log --since`` over 1M events;
7. bulk holds (``"op": "hold"`` lines) and then their settles (``"op": "settle"``) through
   ``charge --file`` on SQLite vs the same file's plain charges (each the median of
   alternated runs);
8. ``smscredits serve``: single-message ``POST /v1/charge`` from 32 keep-alive connections
   (``wrk``) on SQLite and on Postgres, throughput and p99 latency, vs a bare uvicorn app that
   answers a constant JSON under the same uvicorn settings and the same ``wrk`` command;
   beside them, ``serve`` with its charging replaced by a constant result (no database
   work): its HTTP layer alone, the most the rows could reach;
9. ``smscredits serve``: arrays of 1 000 messages from a few keep-alive connections on SQLite
   vs ``charge --file`` of the same messages (8 and 9: the median of alternated runs).

Figure 8 needs the ``wrk`` load generator (4.1, C, keep-alive, latency percentiles):
``apt-get install -y wrk`` on Debian and Ubuntu, ``brew install wrk`` on macOS. Without it
figure 8 is skipped with a line saying so; figures 8 and 9 need the ``serve`` extra
(``pip install -e '.[serve]'``).

``--profile`` re-runs the smscredits side of every figure that misses its target under
cProfile and prints the top entries by cumulative time after the table.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import math
import os
import pstats
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PG_ENV = "SMSCREDITS_TEST_PG"
PYTHON = sys.executable
BATCH = 1000  # messages per transaction, in smscredits and in the references
PRICE = "0.05"  # the default price per part, in credits
PRICE_MILLIS = 50
BALANCE_MILLIS = 1_000_000 * 1000  # a big balance: a million credits each
LIMITS_MILLIS = (100_000 * 1000, 500_000 * 1000, 900_000 * 1000)  # day, week, month: never bind
SEED = 20261125


# -- sizes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    users: int = 10_000
    numbers: int = 3_000  # distinct destination numbers
    messages: int = 200_000  # figure 1
    pg_messages: int = 200_000  # figure 2
    # Figures 1 and 2: runs of each side, alternated, each on a fresh database; the figure is
    # the median run (one run swings by a tenth on a shared machine).
    bulk_runs: int = 3
    stream_lines: int = 2_000  # figure 3, after the warm-up
    stream_warmup: int = 100
    journal_big: int = 10_000_000  # figure 4
    journal_small: int = 1_000
    fixed_charges: int = 20_000
    cold_runs: int = 15  # figure 5
    log_events: int = 1_000_000  # figure 6
    log_runs: int = 5
    # Lines of the bulk figures' profiles: all of them, so that the profile shows the steady
    # state rather than start-up (imports, first parse of each number).
    profile_messages: int = 200_000
    # Figures 8 and 9 (serve): runs of each side, alternated; the figure is the median run.
    serve_runs: int = 3
    serve_seconds: int = 10  # figure 8: one wrk run, after a warm-up of serve_warmup seconds
    serve_warmup: int = 2
    serve_connections: int = 32
    serve_wrk_threads: int = 2
    array_messages: int = 100_000  # figure 9: in arrays of BATCH messages
    array_clients: int = 4  # keep-alive connections, one thread each


FULL = Sizes()
QUICK = Sizes(messages=30_000, pg_messages=10_000, bulk_runs=1, stream_lines=1_000,
              journal_big=1_000_000, fixed_charges=5_000, cold_runs=10, profile_messages=5_000,
              serve_runs=1, serve_seconds=4, serve_warmup=1, array_messages=20_000)


# -- results ----------------------------------------------------------------------------


@dataclass
class Figure:
    number: str  # which of the six figures
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float | None
    target: str
    met: bool | None  # None: no target for this row
    higher_is_better: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    # Re-runs the smscredits side under cProfile; returns the top entries as text.
    profile: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    def as_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in vars(self).items() if k != "profile"}
        return {**doc, "ratio": self.ratio}

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "charges/s":
        return f"{v:,.0f}"
    if v < 1:
        return f"{v:.3f}"
    if unit == "µs/charge":
        return f"{v:,.1f}"
    return f"{v:.2f}" if v < 100 else f"{v:,.0f}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:,.0f}×" if r >= 100 else f"{r:.4g}×"  # 4 digits: 1.303× is not 1.3×


def render_table(figures: Sequence[Figure]) -> str:
    head = ("#", "figure", "value", "unit", "baseline", "baseline value", "ratio", "target", "met")
    rows = [head]
    for f in figures:
        met = "-" if f.met is None else ("yes" if f.met else "NO")
        rows.append((f.number, f.name, fmt_value(f.value, f.unit), f.unit, f.baseline_name,
                     fmt_value(f.baseline, f.unit), fmt_ratio(f.ratio), f.target, met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    right = {2, 5, 6}
    lines = []
    for n, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- timing helpers ---------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    """Seconds that ``fn()`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000


def percentile_ms(samples: Sequence[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1)] * 1000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the command under test -------------------------------------------------------------


class Cli:
    """Runs smscredits in subprocesses, in a clean environment."""

    def __init__(self, home: Path) -> None:
        beside = Path(sys.executable).parent / "smscredits"
        found = shutil.which("smscredits")
        if beside.exists():
            self.argv = [str(beside)]
            self.how = f"console script {beside}"
        elif found:
            self.argv = [found]
            self.how = f"console script {found}"
        else:
            self.argv = [PYTHON, "-m", "smscredits"]
            self.how = f"{PYTHON} -m smscredits"
        if found and Path(found) != beside and beside.exists():
            self.how += f" (not the pyenv shim {found}, which adds a bash + pyenv start)"
        # Bytecode is cached (in the temp dir) as for an installed tool, even where the
        # environment sets PYTHONDONTWRITEBYTECODE, which would recompile smscredits each run.
        dropped = ("NO_COLOR", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("SMSCREDITS_") and k not in dropped}
        self.env.update({
            "SMSCREDITS_CONFIG_DIR": str(home / "config"), "XDG_DATA_HOME": str(home / "data"),
            "SMSCREDITS_ACTOR": "bench", "NO_COLOR": "1", "COLUMNS": "120",
            "PYTHONPYCACHEPREFIX": str(home / "pycache"),
        })

    def cmd(self, db: str | None, *args: str) -> list[str]:
        return [*self.argv, *(["--db", db] if db else []), *args]

    def run(self, db: str | None, *args: str) -> str:
        proc = subprocess.run(self.cmd(db, *args), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, env=self.env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"smscredits {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def wall(self, argv: list[str]) -> tuple[float, str]:
        """Wall time of a whole command (stdout to /dev/null) and its stderr."""
        start = time.perf_counter()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=self.env, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): "
                               f"{proc.stderr.decode()[-2000:]}")
        return elapsed, proc.stderr.decode()


# -- data -------------------------------------------------------------------------------


def user_name(i: int) -> str:
    return f"user{i:05d}"


def phone_numbers(count: int, rng: random.Random) -> list[str]:
    """Distinct valid numbers from several countries, checked with phonenumbers."""
    import phonenumbers

    patterns = [("+3630", 7), ("+4479", 8), ("+1212555", 4), ("+49151", 8), ("+336", 8)]
    found: set[str] = set()
    while len(found) < count:
        prefix, digits = rng.choice(patterns)
        number = prefix + str(rng.randrange(10**digits)).zfill(digits)
        if phonenumbers.is_valid_number(phonenumbers.parse(number)):
            found.add(number)
    return sorted(found)


TEXTS = [
    "Your verification code is 482913. It expires in 10 minutes.",
    "Hi! Your parcel 7731-A will arrive tomorrow between 9:00 and 12:00. Reply STOP to opt out.",
    "Árvíztűrő tükörfúrógép: a számla összege 12 500 Ft, esedékes 2026-12-01.",  # UCS-2
    "Reminder: your appointment is on Monday at 10:30 {Room 4} ~ bring your card [ID].",
    "Weekend sale! " + "Up to 50% off on everything in store and online, today only. " * 3,
    "Ihre Bestellung wurde versandt 📦 Sendungsnummer 00340434161094042557",  # emoji
    "OK",
]


def message_lines(n: int, users: int, numbers: list[str], rng: random.Random,
                  id_prefix: str) -> Iterator[dict[str, Any]]:
    for i in range(n):
        msg: dict[str, Any] = {"user": user_name(rng.randrange(users) + 1),
                               "to": rng.choice(numbers)}
        if i % 5 == 4:
            msg["parts"] = rng.randint(1, 3)
        else:
            msg["text"] = rng.choice(TEXTS)
        msg["id"] = f"{id_prefix}-{i:08d}"
        yield msg


def write_jsonl(path: Path, msgs: Iterator[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for m in msgs:
            f.write(json.dumps(m, ensure_ascii=False) + "\n")
    return path


# -- databases --------------------------------------------------------------------------


def pg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


def populate(url: str, n_users: int, *, journal_rows: bool = True) -> None:
    """Users, each with a credits power (a big balance, limits that never bind), and (with
    ``journal_rows``) their opening events with a correct hash chain: inserted in bulk through
    the package's own tables."""
    from sqlalchemy import bindparam, insert, select, update

    from smscredits import clock
    from smscredits.storage.engine import open_db
    from smscredits.storage.tables import events, powers, users

    db = open_db(url, actor="bench")
    now = clock.now_us()
    day, week, month = LIMITS_MILLIS
    with db.write() as conn:
        conn.execute(insert(users), [{"name": user_name(i), "tz": None, "disabled": False,
                                      "created_at": now} for i in range(1, n_users + 1)])
        user_ids = conn.execute(select(users.c.id)).scalars().all()
        conn.execute(insert(powers), [
            {"user_id": uid, "kind": "credits", "balance": BALANCE_MILLIS, "overdraft": 0,
             "daily_limit": day, "weekly_limit": week, "monthly_limit": month, "day_key": 0,
             "day_spent": 0, "week_key": 0, "week_spent": 0, "month_key": 0, "month_spent": 0,
             "refill_below": None, "last_hash": None, "created_at": now}
            for uid in user_ids
        ])
        if journal_rows:
            power_ids = conn.execute(select(powers.c.user_id, powers.c.id)).all()
            rows, heads = opening_events(power_ids, now)
            conn.execute(insert(events), rows)
            conn.execute(update(powers).where(powers.c.id == bindparam("pid"))
                         .values(last_hash=bindparam("h")), heads)
    if not db.is_sqlite:
        # Planner statistics, as autovacuum gathers them within a minute of such a load:
        # without them Postgres guesses the batch lookups' join badly.
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE users, powers, prices, events")
    db.dispose()


def opening_events(power_ids: Sequence[Any], now: int) -> tuple[list[dict], list[dict]]:
    """user.added, power.created and limits.set of each (user id, power id), chained; and
    the chain heads to store on the power rows."""
    from smscredits import journal

    day, week, month = LIMITS_MILLIS
    rows, heads = [], []
    for uid, pid in power_ids:
        added = journal.event(at=now, kind="user.added", actor="bench", user_id=uid)
        created = journal.event(
            at=now, kind="power.created", actor="bench", user_id=uid, power_id=pid,
            amount=BALANCE_MILLIS, balance_after=BALANCE_MILLIS,
            detail={"kind": "credits", "overdraft": "0"})
        limited = journal.event(
            at=now, kind="limits.set", actor="bench", user_id=uid, power_id=pid,
            prev_hash=created[-1],
            detail={"day": str(day // 1000), "week": str(week // 1000),
                    "month": str(month // 1000)})
        rows += [journal.as_row(e) for e in (added, created, limited)]
        heads.append({"pid": pid, "h": limited[-1]})
    return rows, heads


def prepare(cli: Cli, url: str, n_users: int, *, journal_rows: bool = True) -> None:
    """A database with the schema made by smscredits itself, a default price and the users."""
    cli.run(url, "db", "upgrade")
    cli.run(url, "price", "set", "default", PRICE)
    populate(url, n_users, journal_rows=journal_rows)


def head_file(src: Path, n: int) -> Path:
    """The first ``n`` lines of a file, as a new file beside it."""
    dst = src.with_name(f"{src.stem}-head{n}{src.suffix}")
    with src.open("rb") as f, dst.open("wb") as out:
        for _, line in zip(range(n), f, strict=False):
            out.write(line)
    return dst


def count_charged(url: str) -> int:
    from sqlalchemy import func, select

    from smscredits.storage.engine import open_db
    from smscredits.storage.tables import events

    db = open_db(url)
    with db.read() as conn:
        n = conn.execute(select(func.count()).select_from(events)
                         .where(events.c.kind == "message.charged")).scalar_one()
    db.dispose()
    return n


def fill_journal(path: Path, n_events: int, n_users: int) -> None:
    """Bulk-fill ``events`` (and the matching ``messages``) of a prepared SQLite database with
    ``n_events`` charges spread at random over the users and over the last 90 days (one
    chunk's users and parts are random; ids and times ascend together).

    The events indexes are dropped and re-created from the schema's own SQL (a sorted index
    build is much faster than random inserts), so the schema stays the one smscredits made.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        mismatched = conn.execute("SELECT count(*) FROM powers WHERE id != user_id").fetchone()
        assert mismatched[0] == 0, "power ids are expected to equal user ids"
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1000000")
        index_sql = [r[0] for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' "
            "AND sql IS NOT NULL")]
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                    "AND tbl_name = 'events' AND sql IS NOT NULL").fetchall():
            conn.execute(f'DROP INDEX "{name}"')
        end = datetime.now(UTC) - timedelta(minutes=1)
        span_us = 90 * 86_400 * 1_000_000
        start_us = int(end.timestamp()) * 1_000_000 - span_us
        step = max(1, span_us // n_events)
        chunk = 1_000_000
        for lo in range(0, n_events, chunk):
            hi = min(n_events, lo + chunk)
            conn.execute("BEGIN")
            conn.execute(
                """
                INSERT INTO events (at, user_id, power_id, kind, amount, balance_after, ref,
                                    note, actor, detail, hash)
                WITH RECURSIVE s(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM s WHERE i < :hi),
                     r(i, u, parts) AS (SELECT i, 1 + abs(random()) % :users,
                                               1 + abs(random()) % 3 FROM s)
                SELECT :start + i * :step, u, u, 'message.charged', -:price * parts,
                       :balance - :price * parts * (i / :users), printf('fill-%010d', i), NULL,
                       'bench',
                       printf('{"parts":%d,"rule":"default","to":"+3630%07d"}', parts,
                              i % 10000000),
                       lower(hex(randomblob(32)))
                FROM r
                """,
                {"lo": lo, "hi": hi - 1, "users": n_users, "start": start_us, "step": step,
                 "price": PRICE_MILLIS, "balance": BALANCE_MILLIS},
            )
            conn.execute(
                """
                INSERT INTO messages (id, user_name, user_id, power_id, at, to_number, country,
                                      rule, encoding, parts, price, cost, status, reason,
                                      balance_after, day_key, week_key, month_key)
                SELECT ref, printf('user%05d', user_id), user_id, power_id, at,
                       json_extract(detail, '$.to'), 'HU', 'default', 'gsm', -amount / :price,
                       :price, -amount, 'charged', NULL, balance_after, 0, 0, 0
                FROM events WHERE id > (SELECT coalesce(max(id), 0) FROM events) - :n
                """,
                {"price": PRICE_MILLIS, "n": hi - lo},
            )
            conn.execute("COMMIT")
        for sql in index_sql:
            conn.execute(sql)
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


# -- the references ---------------------------------------------------------------------


def ref_parts(msg: dict[str, Any]) -> int:
    """A crude part count for the references (no encoding detection)."""
    if "parts" in msg:
        return msg["parts"]
    n = len(msg["text"])
    return 1 if n <= 160 else -(-n // 153)


def ref_batches(jsonl: Path) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    with jsonl.open("rb") as f:
        for line in f:
            batch.append(json.loads(line))
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def sqlite_reference(path: Path, jsonl: Path) -> float:
    """Plain sqlite3: per message an UPDATE of the balance and an INSERT of its event, 1 000
    messages per transaction, WAL and synchronous=FULL (durable commits). Seconds."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    accounts = {name: (uid, pid) for name, uid, pid in conn.execute(
        "SELECT u.name, u.id, p.id FROM users u JOIN powers p ON p.user_id = u.id")}
    debit = "UPDATE powers SET balance = balance - ? WHERE id = ? RETURNING balance"
    record = ("INSERT INTO events (at, user_id, power_id, kind, amount, balance_after, ref, "
              "actor) VALUES (?, ?, ?, 'message.charged', ?, ?, ?, 'bench')")
    start = time.perf_counter()
    for batch in ref_batches(jsonl):
        conn.execute("BEGIN IMMEDIATE")
        now = time.time_ns() // 1000
        for msg in batch:
            uid, pid = accounts[msg["user"]]
            cost = PRICE_MILLIS * ref_parts(msg)
            (balance,) = conn.execute(debit, (cost, pid)).fetchone()
            conn.execute(record, (now, uid, pid, -cost, balance, msg["id"]))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def pg_reference(url: str, jsonl: Path) -> float:
    """Plain psycopg in pipeline mode: per message an UPDATE and an INSERT, 1 000 messages per
    transaction. Seconds."""
    import psycopg

    with psycopg.connect(pg_conninfo(url)) as conn:
        accounts = {name: (uid, pid) for name, uid, pid in conn.execute(
            "SELECT u.name, u.id, p.id FROM users u JOIN powers p ON p.user_id = u.id")}
        conn.commit()
        debit = "UPDATE powers SET balance = balance - %s WHERE id = %s"
        record = ("INSERT INTO events (at, user_id, power_id, kind, amount, balance_after, ref, "
                  "actor) VALUES (%s, %s, %s, 'message.charged', %s, "
                  "(SELECT balance FROM powers WHERE id = %s), %s, 'bench')")
        start = time.perf_counter()
        with conn.pipeline():
            cur = conn.cursor()
            for batch in ref_batches(jsonl):
                with conn.transaction():
                    now = time.time_ns() // 1000
                    for msg in batch:
                        uid, pid = accounts[msg["user"]]
                        cost = PRICE_MILLIS * ref_parts(msg)
                        cur.execute(debit, (cost, pid))
                        cur.execute(record, (now, uid, pid, -cost, pid, msg["id"]))
        return time.perf_counter() - start


# -- figures ----------------------------------------------------------------------------


@dataclass
class Context:
    cli: Cli
    sizes: Sizes
    tmp: Path
    numbers: list[str]
    pg: str | None
    pg_schemas: list[str] = field(default_factory=list)
    bulk_db: Path | None = None
    load_start: float = field(default_factory=lambda: os.getloadavg()[0])
    cpu_start: float = field(default_factory=lambda: cpu_check())
    cpu_end: float | None = None
    source_start: str = field(default_factory=lambda: source_fingerprint())
    notes: list[str] = field(default_factory=list)  # figures skipped, and why
    problems: list[str] = field(default_factory=list)  # checks that failed
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])  # Postgres schemas


def bulk_file(ctx: Context, name: str, n: int) -> Path:
    rng = random.Random(SEED + n)
    return write_jsonl(ctx.tmp / f"{name}.jsonl",
                       message_lines(n, ctx.sizes.users, ctx.numbers, rng, name))


def copy_db(src: Path, dst: Path) -> None:
    """A copy of a closed SQLite database, through SQLite's backup, in WAL mode as smscredits
    leaves its files."""
    with (contextlib.closing(sqlite3.connect(src)) as source,
          contextlib.closing(sqlite3.connect(dst)) as copy):
        source.backup(copy)
        copy.execute("PRAGMA journal_mode = WAL")


def bulk_runs(ctx: Context, figure: str, what: str, ours: Callable[[int], float],
              reference: Callable[[int], float]) -> tuple[list[float], list[float]]:
    """Seconds of each run of smscredits and of the reference, alternated so that the
    machine's drift hits both alike."""
    runs = ctx.sizes.bulk_runs
    times: tuple[list[float], list[float]] = ([], [])
    for run in range(runs):
        log(f"{figure}: {what} (run {run + 1} of {runs})")
        times[0].append(ours(run))
        os.sync()  # each run's writes reach the disk before the next run is timed
        log(f"{figure}: reference (run {run + 1} of {runs})")
        times[1].append(reference(run))
        os.sync()
    return times


def figure_sqlite_bulk(ctx: Context) -> list[Figure]:
    n = ctx.sizes.messages
    jsonl = bulk_file(ctx, "bulk", n)
    template = ctx.tmp / "bulk-template.db"
    prepare(ctx.cli, str(template), ctx.sizes.users)

    def ours(run: int) -> float:
        db = ctx.tmp / f"bulk-{run}.db"
        copy_db(template, db)
        seconds, err = ctx.cli.wall(ctx.cli.cmd(str(db), "charge", "--file", str(jsonl)))
        charged = count_charged(str(db))
        assert charged == n, f"smscredits charged {charged} of {n}: {err}"
        if ctx.bulk_db is None:  # figures 3 and 5 go on with the first
            ctx.bulk_db = db
        else:
            remove_db(db)
        return seconds

    def reference(run: int) -> float:
        ref = ctx.tmp / f"bulk-ref-{run}.db"
        copy_db(template, ref)
        seconds = sqlite_reference(ref, jsonl)
        remove_db(ref)
        return seconds

    runs, ref_runs = bulk_runs(ctx, "1", f"charge --file, {n} messages on SQLite", ours,
                               reference)
    seconds, ref_seconds = statistics.median(runs), statistics.median(ref_runs)

    def profile() -> str:
        fresh = ctx.tmp / "bulk-profile.db"
        copy_db(template, fresh)
        part = head_file(jsonl, ctx.sizes.profile_messages)
        return profile_cli(ctx, ctx.cli.cmd(str(fresh), "charge", "--file", str(part)))

    return [Figure("1", "bulk charge --file, SQLite", n / seconds, "charges/s", "sqlite3 loop",
                   n / ref_seconds, "≥ 0.5× baseline", n / seconds >= 0.5 * n / ref_seconds,
                   higher_is_better=True, profile=profile,
                   detail={"messages": n, "seconds": seconds, "reference_seconds": ref_seconds,
                           "runs": runs, "reference_runs": ref_runs})]


def figure_holds(ctx: Context) -> list[Figure]:
    """Holds, then settles of those holds, against plain charges of the same messages: the
    same lines with an ``op``, each side on a fresh copy of one database, alternated."""
    n = ctx.sizes.messages
    msgs = list(message_lines(n, ctx.sizes.users, ctx.numbers, random.Random(SEED + n), "h"))
    charges = write_jsonl(ctx.tmp / "h-charges.jsonl", iter(msgs))
    holds = write_jsonl(ctx.tmp / "h-holds.jsonl", ({"op": "hold", **m} for m in msgs))
    settles = write_jsonl(ctx.tmp / "h-settles.jsonl",
                          ({"op": "settle", "id": m["id"]} for m in msgs))
    template = ctx.tmp / "holds-template.db"
    prepare(ctx.cli, str(template), ctx.sizes.users)
    times: dict[str, list[float]] = {"charge": [], "hold": [], "settle": []}
    for run in range(ctx.sizes.bulk_runs):
        for side, jsonl in (("charge", charges), ("hold", holds)):
            log(f"7: {side} --file, {n} messages on SQLite (run {run + 1})")
            db = ctx.tmp / f"holds-{side}-{run}.db"
            copy_db(template, db)
            seconds, err = ctx.cli.wall(ctx.cli.cmd(str(db), "charge", "--file", str(jsonl)))
            assert "errors 0" in err, err
            times[side].append(seconds)
            os.sync()
            if side == "hold":
                log(f"7: settle --file, {n} messages on SQLite (run {run + 1})")
                seconds, err = ctx.cli.wall(ctx.cli.cmd(str(db), "charge", "--file",
                                                        str(settles)))
                assert f"settled {n}" in err, err
                times["settle"].append(seconds)
                os.sync()
            remove_db(db)
    rate = {side: n / statistics.median(runs) for side, runs in times.items()}
    return [Figure(f"7{'ab'[i]}", f"bulk {side}s --file, SQLite", rate[side], "messages/s",
                   "charges of the same file", rate["charge"], "≥ 0.8× baseline",
                   rate[side] >= 0.8 * rate["charge"], higher_is_better=True,
                   detail={"messages": n, "runs": times[side], "charge_runs": times["charge"]})
            for i, side in enumerate(("hold", "settle"))]


def remove_db(path: Path) -> None:
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink(missing_ok=True)


def pg_fresh_schema(ctx: Context, role: str) -> str:
    """A new schema of the run, prepared as ``prepare`` does; its URL."""
    import psycopg

    assert ctx.pg
    schema = f"bench_{ctx.run_id}_{role}"
    with psycopg.connect(pg_conninfo(ctx.pg), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    ctx.pg_schemas.append(schema)
    url = pg_schema_url(ctx.pg, schema)
    prepare(ctx.cli, url, ctx.sizes.users)
    return url


def pg_drop_schema(ctx: Context, url: str) -> None:
    """Drops a schema of ``pg_fresh_schema``: each run's data goes before the next, as does
    its write-back (the server's checkpoints of one run's writes would slow the next)."""
    import psycopg

    schema = next(name for name in ctx.pg_schemas if url == pg_schema_url(ctx.pg or "", name))
    ctx.pg_schemas.remove(schema)
    with psycopg.connect(pg_conninfo(ctx.pg or ""), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")  # a superuser's, or pg_checkpoint's, right


def figure_pg_bulk(ctx: Context) -> list[Figure]:
    if not ctx.pg:
        return []
    n = ctx.sizes.pg_messages
    jsonl = bulk_file(ctx, "pg-bulk", n)

    def ours(run: int) -> float:
        url = pg_fresh_schema(ctx, f"main{run}")
        seconds, err = ctx.cli.wall(ctx.cli.cmd(url, "charge", "--file", str(jsonl)))
        charged = count_charged(url)
        assert charged == n, f"smscredits charged {charged} of {n}: {err}"
        pg_drop_schema(ctx, url)
        return seconds

    def reference(run: int) -> float:
        url = pg_fresh_schema(ctx, f"ref{run}")
        seconds = pg_reference(url, jsonl)
        pg_drop_schema(ctx, url)
        return seconds

    runs, ref_runs = bulk_runs(ctx, "2", f"charge --file, {n} messages on Postgres", ours,
                               reference)
    seconds, ref_seconds = statistics.median(runs), statistics.median(ref_runs)

    def profile() -> str:
        part = head_file(jsonl, ctx.sizes.profile_messages)
        return profile_cli(ctx, ctx.cli.cmd(pg_fresh_schema(ctx, "profile"), "charge",
                                            "--file", str(part)))

    rate = n / seconds
    return [Figure("2", "bulk charge --file, Postgres", rate, "charges/s", "psycopg pipeline",
                   n / ref_seconds, "≥ 20,000/s", rate >= 20_000, higher_is_better=True,
                   profile=profile,
                   detail={"messages": n, "seconds": seconds, "reference_seconds": ref_seconds,
                           "runs": runs, "reference_runs": ref_runs})]


ECHO = ("import sys\n"
        "for line in iter(sys.stdin.buffer.readline, b''):\n"
        "    sys.stdout.buffer.write(line)\n"
        "    sys.stdout.buffer.flush()\n")


def round_trips(argv: list[str], lines: list[bytes], env: dict[str, str], warmup: int,
                expect: bytes = b"", after_each: Callable[[], Any] | None = None) -> list[float]:
    """Seconds per line: write one line, read its one result line (which must contain
    ``expect``), call ``after_each``, repeat."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    samples = []
    try:
        for i, line in enumerate(lines):
            start = time.perf_counter()
            proc.stdin.write(line)
            proc.stdin.flush()
            answer = proc.stdout.readline()
            elapsed = time.perf_counter() - start
            if expect not in answer:
                raise RuntimeError(f"{argv[0]}: line {i + 1} answered {answer[:300]!r}")
            if i >= warmup:
                samples.append(elapsed)
                if after_each is not None:
                    after_each()
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    return samples


def figure_streaming(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    assert ctx.bulk_db is not None
    rng = random.Random(SEED + 3)
    lines = [(json.dumps(m, ensure_ascii=False) + "\n").encode()
             for m in message_lines(s.stream_warmup + s.stream_lines, s.users, ctx.numbers, rng,
                                    "stream")]
    log(f"3: streaming, {len(lines)} lines one at a time")
    argv = ctx.cli.cmd(str(ctx.bulk_db), "charge", "--file", "-")
    # The fsync floor, measured between the round trips so that both see the same disk.
    floor_db = DurableCommits(ctx.tmp / "floor.db")
    ours = round_trips(argv, lines, ctx.cli.env, s.stream_warmup, b'"status":"charged"',
                       after_each=floor_db.commit_one)
    floor_db.close()
    floor = floor_db.samples
    echo = round_trips([PYTHON, "-c", ECHO], lines, ctx.cli.env, s.stream_warmup)

    def profile() -> str:
        rng2 = random.Random(SEED + 33)
        again = [(json.dumps(m) + "\n").encode() for m in message_lines(
            s.stream_warmup + s.stream_lines, s.users, ctx.numbers, rng2, "stream-profile")]
        out = ctx.tmp / "stream.prof"
        prof_argv = [PYTHON, "-m", "cProfile", "-o", str(out), "-m", "smscredits",
                     *argv[len(ctx.cli.argv):]]
        round_trips(prof_argv, again, ctx.cli.env, 0)
        return top_entries(out)

    p50, p99 = median_ms(ours), percentile_ms(ours, 99)
    detail = {"lines": len(ours), "warmup": s.stream_warmup}
    return [
        Figure("3", "streaming charge --file -, SQLite, p50", p50, "ms/line", "echo co-process",
               median_ms(echo), "≤ 1 ms", p50 <= 1.0, detail=detail, profile=profile),
        Figure("3", "streaming charge --file -, SQLite, p99", p99, "ms/line", "echo co-process",
               percentile_ms(echo, 99), "-", None, detail=detail),
        Figure("3", "floor: one-row durable commit, plain sqlite3, p50", median_ms(floor), "ms",
               "-", None, "-", None, detail={"commits": len(floor)}),
    ]


class DurableCommits:
    """One-row transactions with plain sqlite3, WAL and synchronous=FULL: the fsync that any
    durable per-line charge pays, on the same file system."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x INTEGER)")
        self.samples: list[float] = []

    def commit_one(self) -> None:
        start = time.perf_counter()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("INSERT INTO t (x) VALUES (?)", (len(self.samples),))
        self.conn.execute("COMMIT")
        self.samples.append(time.perf_counter() - start)

    def close(self) -> None:
        self.conn.close()


def fixed_requests(ctx: Context, n: int, tag: str) -> list[list[Any]]:
    from smscredits.charging import ChargeRequest

    rng = random.Random(SEED + 4)
    reqs = [ChargeRequest(m["user"], m["to"], m.get("text"), m.get("parts"), m["id"])
            for m in message_lines(n, ctx.sizes.users, ctx.numbers, rng, tag)]
    return [reqs[i : i + BATCH] for i in range(0, n, BATCH)]


def figure_big_journal(ctx: Context, journal_db: Callable[[int], Path]) -> list[Figure]:
    from smscredits.charging import Charger
    from smscredits.storage.engine import open_db

    s = ctx.sizes
    big, small = journal_db(s.journal_big), journal_db(s.journal_small)
    log(f"4: {s.fixed_charges} charges with {s.journal_big:,} vs {s.journal_small:,} events")
    chargers = {"big": Charger(open_db(str(big), actor="bench")),
                "small": Charger(open_db(str(small), actor="bench"))}
    times: dict[str, list[float]] = {"big": [], "small": []}
    for name, charger in chargers.items():  # warm up: engine, statement caches, price book
        charger.charge_batch(fixed_requests(ctx, BATCH, f"warm-{name}")[0])
    batches = {name: fixed_requests(ctx, s.fixed_charges, f"fixed-{name}") for name in chargers}
    for i in range(len(batches["big"])):  # alternate, so drift hits both alike
        for name, charger in chargers.items():
            batch = batches[name][i]
            seconds = timed(lambda c=charger, b=batch: c.charge_batch(b))
            times[name].append(seconds / len(batch))
    for charger in chargers.values():
        charger.db.dispose()
    big_us = statistics.median(times["big"]) * 1e6
    small_us = statistics.median(times["small"]) * 1e6

    def profile() -> str:
        charger = Charger(open_db(str(big), actor="bench"))
        prof = cProfile.Profile()
        prof.enable()
        for batch in fixed_requests(ctx, s.fixed_charges, "fixed-profile"):
            charger.charge_batch(batch)
        prof.disable()
        charger.db.dispose()
        out = ctx.tmp / "journal.prof"
        prof.dump_stats(out)
        return top_entries(out)

    label = f"{s.journal_big:,} vs {s.journal_small:,} events"
    return [Figure("4", f"charge cost, {label}", big_us, "µs/charge",
                   f"{s.journal_small:,} events", small_us, "≤ 1.2× baseline",
                   big_us <= 1.2 * small_us, profile=profile,
                   detail={"charges": s.fixed_charges, "batch": BATCH,
                           "big_events": s.journal_big, "small_events": s.journal_small})]


def interleaved_walls(cli: Cli, commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Median wall time (ms) of each command, run round-robin ``runs`` times."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():  # one untimed run each: page cache, .pyc files
        cli.wall(argv)
    for _ in range(runs):
        for name, argv in commands.items():
            samples[name].append(cli.wall(argv)[0])
    return {name: median_ms(v) for name, v in samples.items()}


def figure_cold_start(ctx: Context) -> list[Figure]:
    assert ctx.bulk_db is not None
    db, user = str(ctx.bulk_db), user_name(1)
    commands = {
        "help": ctx.cli.cmd(None, "--help"),
        "version": ctx.cli.cmd(None, "--version"),
        "balance": ctx.cli.cmd(db, "credits", "balance", user),
        "log": ctx.cli.cmd(db, "log", user, "--limit", "50"),
        "typer": [PYTHON, "-c", "import typer"],
        "typer+sqlmodel": [PYTHON, "-c", "import typer, sqlmodel"],
    }
    log(f"5: cold start, {ctx.sizes.cold_runs} runs each")
    ms = interleaved_walls(ctx.cli, commands, ctx.sizes.cold_runs)
    figures = []
    for name, shown, base, factor in (
        ("help", "--help", "typer", 1.3), ("version", "--version", "typer", 1.3),
        ("balance", f"--db F credits balance {user}", "typer+sqlmodel", 1.15),
        ("log", f"--db F log {user} --limit 50", "typer+sqlmodel", 1.15),
    ):
        label = "import typer" if base == "typer" else "import typer, sqlmodel"
        figures.append(Figure("5", f"cold start: smscredits {shown}", ms[name], "ms", label,
                              ms[base], f"≤ {factor}× baseline", ms[name] <= factor * ms[base],
                              detail={"runs": ctx.sizes.cold_runs},
                              profile=lambda argv=commands[name]: profile_cli(
                                  ctx, argv, imports=True)))
    return figures


def figure_log_pages(ctx: Context, journal_db: Callable[[int], Path]) -> list[Figure]:
    s = ctx.sizes
    path = journal_db(s.log_events)
    with sqlite3.connect(path) as conn:
        lo, hi = conn.execute("SELECT min(at), max(at) FROM events WHERE ref LIKE 'fill-%'") \
            .fetchone()
    middle = datetime.fromtimestamp((lo + hi) // 2 // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%MZ")
    db, user = str(path), user_name(42)
    commands = {
        "user": ctx.cli.cmd(db, "log", user, "--limit", "50"),
        "since": ctx.cli.cmd(db, "log", "--since", middle),
        "typer+sqlmodel": [PYTHON, "-c", "import typer, sqlmodel"],
    }
    log(f"6: log pages over {s.log_events:,} events, {s.log_runs} runs each")
    ms = interleaved_walls(ctx.cli, commands, s.log_runs)
    figures = []
    for name, shown in (("user", f"log {user} --limit 50"), ("since", f"log --since {middle}")):
        figures.append(Figure("6", f"{shown}, {s.log_events:,} events", ms[name], "ms",
                              "import typer, sqlmodel", ms["typer+sqlmodel"], "≤ 200 ms",
                              ms[name] <= 200, detail={"runs": s.log_runs},
                              profile=lambda argv=commands[name]: profile_cli(
                                  ctx, argv, imports=True)))
    return figures


# -- figures 8 and 9: smscredits serve ------------------------------------------------------

WRK_INSTALL = ("figure 8 skipped: it needs the wrk load generator (wrk 4.1): "
               "apt-get install -y wrk (Debian, Ubuntu) or brew install wrk (macOS)")

# Each wrk thread runs its own Lua state: ``setup`` (in the main state) numbers the threads,
# so that a message id, PREFIX-THREAD-COUNTER, is unique per request; ``done`` prints the
# summary as one JSON line, with the requests each thread sent (some are still in flight when
# the run ends: the server charges them, wrk does not count them).
WRK_LUA = r"""
local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1]
  users = tonumber(args[2])
  sent = 0
  math.randomseed(id * 7919)
  headers = {["Content-Type"] = "application/json"}
end

function request()
  sent = sent + 1
  local body = string.format(
    '{"user":"user%05d","to":"%s","text":"Your code is %06d","id":"%s-%d-%d"}',
    math.random(users), NUMBERS[math.random(#NUMBERS)], sent % 1000000, prefix, id, sent)
  return wrk.format("POST", "/v1/charge", headers, body)
end

function done(summary, latency, requests)
  local sent_total = 0
  for _, t in ipairs(threads) do
    sent_total = sent_total + t:get("sent")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK-JSON {"requests":%d,"sent":%d,"duration_us":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d}\n',
    summary.requests, sent_total, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, math.floor(latency:percentile(50)), math.floor(latency:percentile(90)),
    math.floor(latency:percentile(99)), math.floor(latency.max)))
end
"""

# The floor of figure 8: uvicorn with nothing behind it. Reads the body, answers a constant
# JSON of a charge result's size; uvicorn as ``serve`` runs it (loop and http "auto", that is
# uvloop and httptools when installed, one process, no access log, no server header, lifespan
# on) and, like ``serve``, exits 0 after draining on SIGTERM.
FLOOR_APP = r'''
import signal
import sys

import uvicorn

BODY = (b'{"status":"charged","id":"floor-1-1","user":"user00001","to":"+36301234567",'
        b'"parts":1,"encoding":"gsm","rule":"default","price":"0.05","cost":"0.05",'
        b'"balance":"999999.95","kind":"credits","reason":null,"message":null}')
HEADERS = [(b"content-type", b"application/json"),
           (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False,
                server_header=False, lifespan="on", log_level="warning")
'''

# ``python SCRIPT ARGS...``: ``smscredits ARGS...`` with group commit replaced by a constant
# result per message, nothing read or written: ``serve``'s HTTP layer alone (uvicorn, the
# app, reading the request, writing the answer, metrics), the ceiling of figure 8's rows.
HTTP_ONLY_SERVE = r'''
import sys
from decimal import Decimal

from smscredits.charging import ChargeResult
from smscredits.cli import main
from smscredits.serve import group

COST, BALANCE = Decimal("0.05"), Decimal("999999.95")


async def run(self, items):
    return [ChargeResult("charged", i.id, i.user, i.to, cost=COST, parts=1, encoding="GSM-7",
                         price=COST, rule="default", country="HU", balance=BALANCE)
            for i in items]


group.GroupCommit.run = run
sys.argv = ["smscredits", *sys.argv[1:]]
main()
'''

# ``python SCRIPT OUT ARGS...``: ``smscredits ARGS...`` with cProfile switched on by SIGUSR1
# (sent once the server is warm: its start and imports stay out) in every thread, the event
# loop's and group commit's charging thread alike; the threads' profiles merged into OUT at
# exit.
PROFILE_SERVE = r'''
import cProfile
import pstats
import runpy
import signal
import sys
import threading

out = sys.argv[1]
sys.argv = ["smscredits", *sys.argv[2:]]
started = threading.Event()
profiles = []


def profiled():
    profile = cProfile.Profile()
    profiles.append(profile)
    profile.enable()


def until_started(*_):
    # A thread's Python-level hook until SIGUSR1; then cProfile, at the thread's next call.
    if started.is_set():
        sys.setprofile(None)
        profiled()


def start(*_):
    if not started.is_set():
        started.set()
        profiled()  # the main thread's: the event loop


threading.setprofile(until_started)
signal.signal(signal.SIGUSR1, start)
try:
    runpy.run_module("smscredits", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    sys.setprofile(None)
    if profiles:
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(out)
'''


@dataclass
class WrkRun:
    """One wrk run's summary (times in seconds)."""

    requests: int  # completed
    sent: int  # written, in flight at the end included
    seconds: float
    non_2xx: int  # wrk's "status" errors: HTTP 4xx and 5xx
    socket_errors: int
    p50: float
    p90: float
    p99: float
    max: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A server process on a free loopback port: started, ready (``/healthz`` answers 200),
    then stopped with SIGTERM, which must end it with 0."""

    STARTUP_S = 60

    def __init__(self, argv: Callable[[int], list[str]], env: dict[str, str], log_path: Path,
                 name: str) -> None:
        self.port = free_port()
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(argv(self.port), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def _wait_ready(self) -> None:
        import http.client

        deadline = time.monotonic() + self.STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode} at its start: "
                                   f"{self.log_text()}")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)  # polling for the port to open
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"{self.name} did not answer /healthz in {self.STARTUP_S} s: "
                           f"{self.log_text()}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"{self.name} did not stop on SIGTERM: {self.log_text()}") \
                from None
        if code != 0:
            raise RuntimeError(f"{self.name} exited {code} on SIGTERM, not 0: {self.log_text()}")

    def __enter__(self) -> Served:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.stop()
        elif self.proc.poll() is None:  # already failing: do not hide the first error
            self.proc.kill()
            self.proc.wait()


def write_wrk_script(ctx: Context) -> Path:
    path = ctx.tmp / "charge.lua"
    numbers = ",".join(json.dumps(n) for n in ctx.numbers)
    path.write_text(f"NUMBERS = {{{numbers}}}\n{WRK_LUA}", encoding="utf-8")
    return path


def run_wrk(ctx: Context, script: Path, url: str, seconds: int, prefix: str) -> WrkRun:
    s = ctx.sizes
    argv = ["wrk", f"-t{s.serve_wrk_threads}", f"-c{s.serve_connections}", f"-d{seconds}s",
            "--timeout", "10s", "--latency", "-s", str(script), url, "--", prefix,
            str(s.users)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    found = [line for line in proc.stdout.splitlines() if line.startswith("WRK-JSON ")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr[-2000:]}"
                           f"{proc.stdout[-2000:]}")
    doc = json.loads(found[-1].removeprefix("WRK-JSON "))
    return WrkRun(requests=doc["requests"], sent=doc["sent"],
                  seconds=doc["duration_us"] / 1e6, non_2xx=doc["status"],
                  socket_errors=doc["connect"] + doc["read"] + doc["write"] + doc["timeout"],
                  p50=doc["p50_us"] / 1e6, p90=doc["p90_us"] / 1e6, p99=doc["p99_us"] / 1e6,
                  max=doc["max_us"] / 1e6)


def serve_template(ctx: Context) -> Path:
    """The SQLite database that figures 8 and 9 copy: made once."""
    template = ctx.tmp / "serve-template.db"
    if not template.exists():
        prepare(ctx.cli, str(template), ctx.sizes.users)
    return template


def problem(ctx: Context, text: str) -> None:
    """A figure that measured something other than what it says: said now and in the
    report."""
    ctx.problems.append(text)
    log(f"PROBLEM: {text}")


def serve_argv(ctx: Context, db: str) -> Callable[[int], list[str]]:
    """``serve`` on ``db`` as the figures run it, for a port: tokens off (loopback only), no
    access log."""
    return lambda port: ctx.cli.cmd(db, "serve", "--port", str(port), "--no-access-log")


def wrk_serve_run(ctx: Context, script: Path, db: str, label: str, *,
                  http_only: Path | None = None) -> WrkRun:
    """``serve`` on ``db``: a warm-up, then the timed wrk run; then, the server stopped, the
    charges in the database checked against the requests wrk sent. ``http_only``: the
    script that runs ``serve`` charging nothing (``HTTP_ONLY_SERVE``), nothing to check."""
    s = ctx.sizes
    plain = serve_argv(ctx, db)

    def argv(port: int) -> list[str]:
        if http_only is None:
            return plain(port)
        return [PYTHON, str(http_only), *plain(port)[len(ctx.cli.argv):]]

    with Served(argv, ctx.cli.env, ctx.tmp / f"serve-{label}.log",
                f"serve ({label})") as srv:
        warm = run_wrk(ctx, script, srv.url, s.serve_warmup, f"{label}-warm")
        timed_run = run_wrk(ctx, script, srv.url, s.serve_seconds, label)
    check_wrk(ctx, f"serve ({label})", timed_run, warm)
    if http_only is not None:
        return timed_run
    # Every request wrk saw answered (and not refused) must be charged; so may be those still
    # in flight when wrk stopped, if the server read them whole before wrk closed the
    # connection (the server drains on SIGTERM), so the charges lie between the two counts.
    answered = (warm.requests - warm.non_2xx) + (timed_run.requests - timed_run.non_2xx)
    sent = (warm.sent - warm.non_2xx) + (timed_run.sent - timed_run.non_2xx)
    charged = count_charged(db)
    if not answered <= charged <= sent:
        problem(ctx, f"serve ({label}): {charged} charges in the database, but wrk had "
                f"{answered} requests answered (not refused) and sent {sent}")
    return timed_run


def check_wrk(ctx: Context, label: str, *runs: WrkRun) -> None:
    for run in runs:
        if run.non_2xx or run.socket_errors:
            problem(ctx, f"{label}: wrk saw {run.non_2xx} non-2xx responses and "
                    f"{run.socket_errors} socket errors in {run.requests} requests")
        if run.requests == 0:
            problem(ctx, f"{label}: wrk completed no request")


def figure_serve_single(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    script = write_wrk_script(ctx)
    floor_py = ctx.tmp / "floor_app.py"
    floor_py.write_text(FLOOR_APP, encoding="utf-8")
    template = serve_template(ctx)
    engines = ["SQLite", *(["Postgres"] if ctx.pg else [])]
    http_only_py = ctx.tmp / "http_only_serve.py"
    http_only_py.write_text(HTTP_ONLY_SERVE, encoding="utf-8")
    runs: dict[str, list[WrkRun]] = {"floor": [], "http": [], **{e: [] for e in engines}}
    what = (f"single charges, {s.serve_connections} connections, {s.serve_seconds} s "
            f"(+{s.serve_warmup} s warm-up)")
    for run in range(s.serve_runs):
        for engine in engines:
            log(f"8: serve on {engine}, {what} (run {run + 1} of {s.serve_runs})")
            if engine == "SQLite":
                db = ctx.tmp / f"serve-{run}.db"
                copy_db(template, db)
                runs[engine].append(wrk_serve_run(ctx, script, str(db), f"sqlite{run}"))
                remove_db(db)
            else:
                url = pg_fresh_schema(ctx, f"serve{run}")
                runs[engine].append(wrk_serve_run(ctx, script, url, f"pg{run}"))
                pg_drop_schema(ctx, url)
            os.sync()
            if engine == "SQLite":  # the floor between the two, alternated as in 1 and 2
                log(f"8: bare uvicorn app, {what} (run {run + 1} of {s.serve_runs})")
                with Served(lambda port: [PYTHON, str(floor_py), str(port)], ctx.cli.env,
                            ctx.tmp / "floor.log", "bare uvicorn app") as bare:
                    run_wrk(ctx, script, bare.url, s.serve_warmup, "floor-warm")
                    runs["floor"].append(run_wrk(ctx, script, bare.url, s.serve_seconds,
                                                 "floor"))
                check_wrk(ctx, "bare uvicorn app", runs["floor"][-1])
                log(f"8: serve's HTTP layer alone, {what} (run {run + 1} of {s.serve_runs})")
                db = ctx.tmp / f"serve-http-{run}.db"
                copy_db(template, db)
                runs["http"].append(wrk_serve_run(ctx, script, str(db), f"http{run}",
                                                  http_only=http_only_py))
                remove_db(db)

    def median_run(sample: list[WrkRun]) -> WrkRun:
        return sorted(sample, key=lambda r: r.rate)[len(sample) // 2]

    floor = median_run(runs["floor"])
    http = median_run(runs["http"])
    # No target: what the rows above could reach at most, had charging cost nothing.
    figures = [Figure("8", "serve's HTTP layer alone (charge replaced by a constant)",
                      http.rate, "req/s", "bare uvicorn app", floor.rate, "-", None,
                      higher_is_better=True,
                      detail={"runs_per_s": [r.rate for r in runs["http"]],
                              "p99_ms": http.p99 * 1000})]
    for engine in engines:
        ours = median_run(runs[engine])
        detail = {"connections": s.serve_connections, "wrk_threads": s.serve_wrk_threads,
                  "seconds": s.serve_seconds, "requests": ours.requests,
                  "p50_ms": ours.p50 * 1000, "p90_ms": ours.p90 * 1000,
                  "max_ms": ours.max * 1000, "floor_p50_ms": floor.p50 * 1000,
                  "runs_per_s": [r.rate for r in runs[engine]],
                  "floor_runs_per_s": [r.rate for r in runs["floor"]],
                  "runs_p99_ms": [r.p99 * 1000 for r in runs[engine]]}
        name = f"serve: single charges, {s.serve_connections} conns, {engine}"
        fast_enough = ours.rate >= 0.5 * floor.rate

        def prof(e: str = engine) -> str:
            return profile_serve(ctx, script, e)

        figures += [  # one profile of the engine's server, with whichever row misses first
            Figure("8", name, ours.rate, "req/s", "bare uvicorn app", floor.rate,
                   "≥ 0.5× baseline", fast_enough, higher_is_better=True, detail=detail,
                   profile=prof),
            Figure("8", f"{name}, p99", ours.p99 * 1000, "ms", "bare uvicorn app",
                   floor.p99 * 1000, "≤ 20 ms", ours.p99 * 1000 <= 20, detail=detail,
                   profile=prof if fast_enough else None),
        ]
    return figures


def post_arrays(url: str, bodies: list[bytes], clients: int) -> tuple[float, int, list[str]]:
    """POST each body to /v1/charge over ``clients`` keep-alive connections, one thread each;
    seconds, the ``"charged"`` results counted in the answers, and any failures."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    host, port = urlsplit(url).hostname, urlsplit(url).port
    pending = iter(bodies)
    lock = threading.Lock()
    charged: list[int] = []
    failures: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(host or "127.0.0.1", port, timeout=120)
        count = 0
        try:
            while True:
                with lock:
                    body = next(pending, None)
                if body is None:
                    break
                conn.request("POST", "/v1/charge", body,
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = response.read()
                if response.status != 200:
                    failures.append(f"HTTP {response.status}: {answer[:300]!r}")
                count += answer.count(b'"status":"charged"')
        except OSError as e:
            failures.append(f"{type(e).__name__}: {e}")
        finally:
            conn.close()
            with lock:
                charged.append(count)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, sum(charged), failures


def array_bodies(msgs: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(msgs[i : i + BATCH], ensure_ascii=False).encode()
            for i in range(0, len(msgs), BATCH)]


def figure_serve_arrays(ctx: Context) -> list[Figure]:
    s = ctx.sizes
    n = s.array_messages
    msgs = list(message_lines(n, s.users, ctx.numbers, random.Random(SEED + 9), "arr"))
    jsonl = write_jsonl(ctx.tmp / "arrays.jsonl", iter(msgs))
    bodies = array_bodies(msgs)
    warm_bodies = array_bodies(list(message_lines(BATCH, s.users, ctx.numbers,
                                                  random.Random(SEED + 99), "arr-warm")))
    template = serve_template(ctx)
    times: dict[str, list[float]] = {"serve": [], "file": []}
    what = f"{n} messages in arrays of {BATCH}, {s.array_clients} connections"
    for run in range(s.serve_runs):
        log(f"9: serve on SQLite, {what} (run {run + 1} of {s.serve_runs})")
        db = ctx.tmp / f"arrays-{run}.db"
        copy_db(template, db)
        with Served(serve_argv(ctx, str(db)), ctx.cli.env, ctx.tmp / f"serve-arrays-{run}.log",
                    "serve (arrays)") as srv:
            post_arrays(srv.url, warm_bodies, 1)
            seconds, answered, failures = post_arrays(srv.url, bodies, s.array_clients)
        charged = count_charged(str(db))
        if failures or answered != n or charged != n + BATCH:
            problem(ctx, f"serve (arrays): {answered} of {n} answered charged, {charged} "
                    f"charges in the database (with {BATCH} of the warm-up); failures: "
                    f"{failures[:3]}")
        times["serve"].append(seconds)
        remove_db(db)
        os.sync()
        log(f"9: charge --file, the same {n} messages on SQLite (run {run + 1})")
        db = ctx.tmp / f"arrays-file-{run}.db"
        copy_db(template, db)
        seconds, err = ctx.cli.wall(ctx.cli.cmd(str(db), "charge", "--file", str(jsonl)))
        charged = count_charged(str(db))
        if charged != n:
            problem(ctx, f"charge --file (figure 9): charged {charged} of {n}: {err[-300:]}")
        times["file"].append(seconds)
        remove_db(db)
        os.sync()
    rate = n / statistics.median(times["serve"])
    file_rate = n / statistics.median(times["file"])

    def profile() -> str:
        return profile_serve(ctx, None, "SQLite", bodies=(warm_bodies, bodies))

    return [Figure("9", f"serve: arrays of {BATCH}, {s.array_clients} conns, SQLite", rate,
                   "messages/s", "charge --file, same messages", file_rate, "≥ 0.5× baseline",
                   rate >= 0.5 * file_rate, higher_is_better=True, profile=profile,
                   detail={"messages": n, "clients": s.array_clients, "runs": times["serve"],
                           "file_runs": times["file"]})]


def profile_serve(ctx: Context, script: Path | None, engine: str,
                  bodies: tuple[list[bytes], list[bytes]] | None = None) -> str:
    """``serve`` on a fresh database under cProfile (every thread, once warm), loaded as its
    figure loads it: wrk with ``script``, or the array ``bodies`` (warm-up, timed)."""
    if engine == "SQLite":
        path = ctx.tmp / "serve-profile.db"
        remove_db(path)
        copy_db(serve_template(ctx), path)
        db = str(path)
    else:
        db = pg_fresh_schema(ctx, "profile")
    out = ctx.tmp / "serve.prof"
    wrapper = ctx.tmp / "profile_serve.py"
    wrapper.write_text(PROFILE_SERVE, encoding="utf-8")
    with Served(lambda port: [PYTHON, str(wrapper), str(out), "--db", db, "serve",
                              "--port", str(port), "--no-access-log"],
                ctx.cli.env, ctx.tmp / "serve-profile.log",
                f"serve under cProfile ({engine})") as srv:
        if script is not None:
            run_wrk(ctx, script, srv.url, ctx.sizes.serve_warmup, "profile-warm")
            srv.proc.send_signal(signal.SIGUSR1)
            run_wrk(ctx, script, srv.url, ctx.sizes.serve_seconds, "profile")
        else:
            assert bodies is not None
            post_arrays(srv.url, bodies[0], 1)
            srv.proc.send_signal(signal.SIGUSR1)
            post_arrays(srv.url, bodies[1], ctx.sizes.array_clients)
    if engine != "SQLite":
        pg_drop_schema(ctx, db)
    return serve_profile_text(out)


# Where a server's threads wait for work rather than do it (names, or ends of paths): left
# out of its profile.
IDLE_FRAMES = ("<method 'acquire' of '_thread.lock' objects>",
               "<method 'get' of '_queue.SimpleQueue' objects>", "threading.py", "queue.py",
               "concurrent/futures/thread.py", "asyncio/runners.py")


def serve_profile_text(prof_file: Path, count: int = 25, own: int = 15) -> str:
    """A warm server's profile: first how its work divides (group-commit batches, their
    charging and their COMMIT, the app's time per request on the event loop), then its
    functions by cumulative and by own time, without its threads' idle waits."""
    stats: dict[Any, Any] = pstats.Stats(str(prof_file)).stats  # type: ignore[attr-defined]

    def find(path_end: str, func: str) -> tuple[int, float]:
        """Calls and cumulative seconds of one function (summed if several match)."""
        hits = [v for (path, _, name), v in stats.items()
                if name == func and path.endswith(path_end)]
        return sum(v[1] for v in hits), sum(v[3] for v in hits)

    batches, batch_s = find("charging/charger.py", "charge_batch")
    _, begin_s = find("charging/charger.py", "begin")
    _, commit_s = find("sqlalchemy/engine/default.py", "do_commit")
    requests, _ = find("serve/app.py", "_body")
    _, app_s = find("uvicorn/protocols/http/httptools_impl.py", "run_asgi")
    out = io.StringIO()
    if batches and requests:
        out.write(f"{requests} requests in {batches} group-commit batches "
                  f"({requests / batches:.1f} requests a batch); a batch: "
                  f"{batch_s / batches * 1000:.2f} ms in charge_batch, of which "
                  f"{begin_s / batches * 1000:.2f} ms charging and "
                  f"{commit_s / batches * 1000:.2f} ms in COMMIT; the app on the event loop "
                  f"(uvicorn's run_asgi; a coroutine's time away is not its time): "
                  f"{app_s / requests * 1e6:.0f} µs a request\n")
    busy = {k: v for k, v in stats.items()
            if not any(k[2] == idle or k[0].endswith(idle) for idle in IDLE_FRAMES)}
    total = max(v[3] for v in busy.values())

    def line(key: Any, value: Any) -> str:
        (path, lineno, func), (_cc, calls, own_s, cum_s, _callers) = key, value
        where = func if path == "~" else f"{short_path(path)}:{lineno}({func})"
        return f"{calls:>10} {own_s:>8.3f} {cum_s:>8.3f} {100 * cum_s / total:>4.0f}%  {where}\n"

    head = f"{'ncalls':>10} {'tottime':>8} {'cumtime':>8} {'cum%':>5}  function\n"
    by_cum = sorted(busy.items(), key=lambda kv: kv[1][3], reverse=True)
    by_own = sorted(busy.items(), key=lambda kv: kv[1][2], reverse=True)
    out.write("by cumulative time (all threads, once warm; % of the biggest):\n" + head)
    out.writelines(line(k, v) for k, v in by_cum[:count])
    out.write("by own time, the threads' idle waits left out:\n" + head)
    out.writelines(line(k, v) for k, v in by_own[:own])
    return out.getvalue()


# -- profiles ---------------------------------------------------------------------------


def short_path(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


IMPORT_FRAMES = ("<frozen importlib", "<built-in method builtins.__import__>",
                 "<built-in method builtins.exec>", "<built-in method _imp.")


def top_entries(prof_file: Path, count: int = 15, own: int = 8, *,
                skip_imports: bool = False) -> str:
    """The top ``count`` functions by cumulative time, leaving out the call chain that wraps
    everything (above 97 % of the total) and, with ``skip_imports``, the import machinery
    (its cost is in the module list); then the top ``own`` by own time."""
    stats: dict[Any, Any] = pstats.Stats(str(prof_file)).stats  # type: ignore[attr-defined]
    total = max(v[3] for v in stats.values())
    if skip_imports:
        stats = {k: v for k, v in stats.items()
                 if not (k[0].startswith(IMPORT_FRAMES) or k[2].startswith(IMPORT_FRAMES))}

    def line(key: Any, value: Any) -> str:
        (path, lineno, func), (_cc, calls, own_s, cum_s, _callers) = key, value
        where = func if path == "~" else f"{short_path(path)}:{lineno}({func})"
        return f"{calls:>10} {own_s:>8.3f} {cum_s:>8.3f} {100 * cum_s / total:>4.0f}%  {where}\n"

    head = f"{'ncalls':>10} {'tottime':>8} {'cumtime':>8} {'cum%':>5}  function\n"
    by_cum = sorted(((k, v) for k, v in stats.items() if v[3] <= 0.97 * total),
                    key=lambda kv: kv[1][3], reverse=True)
    by_own = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)
    out = io.StringIO()
    out.write(f"total {total:.2f} s under cProfile; by cumulative time:\n" + head)
    out.writelines(line(k, v) for k, v in by_cum[:count])
    out.write("by own time:\n" + head)
    out.writelines(line(k, v) for k, v in by_own[:own])
    return out.getvalue()


def profile_cli(ctx: Context, argv: list[str], *, imports: bool = False) -> str:
    """cProfile of one smscredits command (run as ``python -m cProfile -m smscredits``); with
    ``imports``, first the modules that take longest to import (``python -X importtime``)."""
    out = ctx.tmp / "cli.prof"
    args = argv[len(ctx.cli.argv):]
    ctx.cli.wall([PYTHON, "-m", "cProfile", "-o", str(out), "-m", "smscredits", *args])
    text = top_entries(out, skip_imports=imports)
    if imports:
        _, err = ctx.cli.wall([PYTHON, "-X", "importtime", "-m", "smscredits", *args])
        text = import_times(err) + text
    return text


def import_times(stderr: str, count: int = 15) -> str:
    """The slowest imports from ``-X importtime`` output, nested as Python imported them."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own_us, cum_us, name = line.removeprefix("import time:").split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        rows.append((int(cum_us), int(own_us), depth, name.strip()))
    total = sum(cum for cum, _, depth, _ in rows if depth == 0)
    out = io.StringIO()
    out.write(f"imports: {total / 1000:.0f} ms in all (python -X importtime); the slowest:\n")
    out.write(f"{'cum ms':>8} {'own ms':>8}  module\n")
    for cum, own, depth, name in sorted(rows, reverse=True)[:count]:
        out.write(f"{cum / 1000:>8.1f} {own / 1000:>8.1f}  {'  ' * depth}{name}\n")
    return out.getvalue()


# -- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 3 minutes)")
    parser.add_argument("--pg", default=os.environ.get(PG_ENV),
                        help=f"Postgres URL (default ${PG_ENV}); its own schemas are dropped")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--profile", action="store_true",
                        help="profile the smscredits side of every figure that misses its target")
    parser.add_argument("--only", help="comma-separated figure numbers to run (1-9); 3 and 5 "
                        "also run 1, whose database they use")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    only = set(args.only.split(",")) if args.only else set("123456789")
    if args.pg and not args.pg.startswith("postgresql"):
        parser.error("--pg must be a postgresql+psycopg:// URL")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smscredits-bench-") as tmp_name:
        tmp = Path(tmp_name)
        numbers = phone_numbers(sizes.numbers, random.Random(SEED))
        ctx = Context(Cli(tmp), sizes, tmp, numbers, args.pg)
        journals: dict[int, Path] = {}

        def journal_db(n: int) -> Path:
            if n not in journals:
                path = tmp / f"journal-{n}.db"
                log(f"building a journal of {n:,} events")
                prepare(ctx.cli, str(path), sizes.users, journal_rows=False)
                fill_journal(path, n, sizes.users)
                # The fill leaves gigabytes to write back: let the disk finish them before
                # any figure is timed, or their write-back slows the timed commits.
                os.sync()
                journals[n] = path
            return journals[n]

        figures: list[Figure] = []
        try:
            if only & {"1", "3", "5"}:
                figures += figure_sqlite_bulk(ctx)
            if "2" in only:
                figures += figure_pg_bulk(ctx)
            if "3" in only:
                figures += figure_streaming(ctx)
            if "5" in only:
                figures += figure_cold_start(ctx)
            if "6" in only:
                figures += figure_log_pages(ctx, journal_db)
            if "4" in only:
                figures += figure_big_journal(ctx, journal_db)
            if "7" in only:
                figures += figure_holds(ctx)
            if only & {"8", "9"} and serve_missing(ctx):
                only -= {"8", "9"}
            if "8" in only:
                if shutil.which("wrk") is None:
                    ctx.notes.append(WRK_INSTALL)
                    log(WRK_INSTALL)
                else:
                    figures += figure_serve_single(ctx)
            if "9" in only:
                figures += figure_serve_arrays(ctx)
            figures.sort(key=lambda f: f.number)
            elapsed = time.perf_counter() - started
            print_report(ctx, figures, args, elapsed)
            if args.out:
                write_json(args.out, ctx, figures, args, elapsed)
            if args.profile:
                print_profiles(figures)
        finally:
            drop_schemas(ctx)
    return 0


CPU_CHECK_STEPS = 3_000_000


def cpu_check() -> float:
    """Milliseconds of a fixed pure-Python loop (best of 3): how fast this machine's CPU is
    now. A shared machine's speed changes from hour to hour (seen here: twice as slow at
    times), which moves every absolute figure; ratios to same-run baselines move less."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(CPU_CHECK_STEPS):
            total += i
        best = min(best, time.perf_counter() - start)
    return best * 1000


def source_fingerprint() -> str:
    """A hash of the smscredits sources, to tell whether they changed during the run."""
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("smscredits")
    assert spec is not None and spec.submodule_search_locations
    digest = hashlib.sha256()
    for root in spec.submodule_search_locations:
        for path in sorted(Path(root).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def print_report(ctx: Context, figures: list[Figure], args: argparse.Namespace,
                 elapsed: float) -> None:
    s = ctx.sizes
    source_end = source_fingerprint()
    print(f"smscredits benchmark ({'quick' if args.quick else 'full'}), "
          f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}; load average "
          f"{ctx.load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"smscredits sources {ctx.source_start}")
    ctx.cpu_end = cpu_check()
    print(f"CPU check: a {CPU_CHECK_STEPS:,}-step Python loop took {ctx.cpu_start:.0f} ms at the "
          f"start, {ctx.cpu_end:.0f} ms at the end (lower is a faster machine)")
    if source_end != ctx.source_start:
        print(f"WARNING: the smscredits sources changed during the run (now {source_end}): "
              "the figures mix versions")
    print()
    print(render_table(figures))
    print()
    print(f"smscredits ran as: {ctx.cli.how}; bytecode cached (PYTHONPYCACHEPREFIX in the "
          "temp dir); figures 5 and 6 time each command after one untimed run")
    print(f"data: {s.users:,} users with a credits power and limits; default price {PRICE}; "
          f"{len(ctx.numbers):,} destination numbers (HU, GB, US, DE, FR); batches of {BATCH}")
    runs = "one run" if s.bulk_runs == 1 else f"the median of {s.bulk_runs} runs"
    print(f"figures 1 and 2: {runs} of smscredits and of the reference, alternated, each on a "
          "fresh database")
    if not ctx.pg:
        print(f"Postgres figures skipped: no --pg and ${PG_ENV} is not set")
    if any(f.number in ("8", "9") for f in figures):
        runs = "one run" if s.serve_runs == 1 else f"the median of {s.serve_runs} runs"
        print(f"figures 8 and 9: {runs} of each side, alternated, each server on a fresh "
              f"database, tokens off (loopback), no access log; 8: wrk -t{s.serve_wrk_threads} "
              f"-c{s.serve_connections} -d{s.serve_seconds}s after a {s.serve_warmup} s warm-up, "
              "one message per POST /v1/charge, each with its own id; 9: "
              f"{s.array_clients} keep-alive connections (Python http.client), arrays of "
              f"{BATCH}, vs the wall time of charge --file (its start included, as in 1)")
    for note in ctx.notes:
        print(note)
    for text in ctx.problems:
        print(f"PROBLEM: {text}")
    print("ratio = value / baseline (charges/s: higher is better; times: lower is better)")
    print("references write less than smscredits: no messages row (idempotency key), no hash "
          "chain, no part counting or number parsing")
    print(f"total time {elapsed:.0f} s")


def serve_missing(ctx: Context) -> bool:
    """Whether the ``serve`` extra is missing (figures 8 and 9 are then skipped)."""
    import importlib.util

    missing = [m for m in ("uvicorn", "starlette") if importlib.util.find_spec(m) is None]
    if missing:
        note = (f"figures 8 and 9 skipped: {', '.join(missing)} missing; "
                "pip install -e '.[serve]'")
        ctx.notes.append(note)
        log(note)
    return bool(missing)


def write_json(path: Path, ctx: Context, figures: list[Figure], args: argparse.Namespace,
               elapsed: float) -> None:
    doc = {
        "mode": "quick" if args.quick else "full",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(), "smscredits": ctx.cli.how, "sizes": asdict(ctx.sizes),
        "postgres": bool(ctx.pg), "seconds": round(elapsed, 1),
        "sources": ctx.source_start, "sources_at_end": source_fingerprint(),
        "cpu_check_ms": {"start": round(ctx.cpu_start), "end": round(ctx.cpu_end or 0)},
        "figures": [f.as_json() for f in figures],
        "notes": ctx.notes, "problems": ctx.problems,
    }
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def print_profiles(figures: list[Figure]) -> None:
    for f in figures:
        if f.met is False and f.profile is not None:
            log(f"profiling figure {f.number}: {f.name}")
            print()
            print(f"profile of figure {f.number}, {f.name} (top 15 by cumulative time):")
            print(f.profile())


def drop_schemas(ctx: Context) -> None:
    if not ctx.pg_schemas:
        return
    import psycopg

    with psycopg.connect(pg_conninfo(ctx.pg or ""), autocommit=True) as conn:
        for schema in ctx.pg_schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    sys.exit(main())
