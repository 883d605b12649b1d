"""`smscredits serve` under concurrent clients, signals and admin commands, on both engines.

A real server in a subprocess (``tests/serve_server.py``) and real HTTP clients, each with a
connection of its own, all sending at once (asyncio): clients racing one balance, the same
message id sent by several clients together, group commit under a burst, SIGTERM and SIGKILL
in the middle of a load, delivery reports racing settle and void for the same hold, two
servers on one Postgres database, and the CLI changing credits and users beside the service.
After each, the accounting is checked from outside: the balance, the credit log, and
``verify`` run against the same database once the server has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import verified
from tests.serve_server import Server, running, start_server

TO = "+36301234567"
PRICE = Decimal("0.05")  # the `funded` default price, per part: "hi" is one part
DRAIN_S = 60  # how long a server may take to drain and exit after SIGTERM

Sent = list[str]  # the message ids of one request; one id sent as an object, not an array


def message(msg_id: str, user: str = "bob") -> dict[str, Any]:
    return {"user": user, "to": TO, "text": "hi", "id": msg_id}


def body(response: httpx.Response) -> Any:
    """The JSON of an answer, its numbers exact."""
    return json.loads(response.text, parse_float=Decimal)


def account(http: httpx.Client, user: str) -> dict[str, Any]:
    response = http.get(f"/v1/users/{user}/balance")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = body(response)
    return doc


def credit_log(cli: Any, user: str) -> list[dict[str, Any]]:
    run = cli("log", user, "--json", "--limit", "0")
    assert run.exit_code == 0, run.stderr
    rows: list[dict[str, Any]] = json.loads(run.stdout, parse_float=Decimal)
    return rows


def charged_refs(cli: Any, user: str) -> Counter[str]:
    """How many times the credit log charged each message id."""
    return Counter(r["ref"] for r in credit_log(cli, user) if r["kind"] == "message.charged")


def cli_balance(cli: Any, user: str) -> Decimal:
    run = cli("credits", "balance", user, "--json")
    assert run.exit_code == 0, run.stderr
    value: Decimal = json.loads(run.stdout, parse_float=Decimal)["balance"]
    return Decimal(value)


def in_chunks(ids: list[str], seed: int) -> list[Sent]:
    """The ids cut into requests: a single object or an array of 1 to 5, at random."""
    rng, out, at = random.Random(seed), [], 0
    while at < len(ids):
        size = rng.choice((1, 1, 1, 2, 3, 5))
        out.append(ids[at:at + size])
        at += size
    return out


def payload(sent: Sent, user: str, as_array: bool) -> Any:
    items = [message(i, user) for i in sent]
    return items if as_array else items[0]


def results_of(sent: Sent, as_array: bool, response: httpx.Response) -> list[dict[str, Any]]:
    """The results of one request, each checked to be its own message's, in order."""
    doc = body(response)
    if as_array:
        assert response.status_code == 200, response.text
        results: list[dict[str, Any]] = doc["results"]
    elif response.status_code == 200:
        results = [doc]
    else:
        assert doc["error"]["code"] == doc["result"]["reason"], response.text
        results = [doc["result"]]
    assert [r["id"] for r in results] == sent, response.text
    return results


async def clients(server: Server, count: int,
                  work: Callable[[int, httpx.AsyncClient], Awaitable[None]]) -> None:
    """``count`` clients at once, each on a connection of its own."""
    async def one(number: int) -> None:
        async with server.async_client(limits=httpx.Limits(max_connections=1)) as http:
            await work(number, http)

    await asyncio.gather(*(one(n) for n in range(count)))


async def send_all(servers: list[Server], requests: list[Sent], user: str,
                   count: int = 8) -> list[tuple[Sent, httpx.Response, bool]]:
    """Every request sent once, by ``count`` clients taking the next one as they are free
    (spread over ``servers``); singles go as an object or as an array of one, alternately."""
    queue = list(enumerate(requests))
    queue.reverse()
    answers: list[tuple[Sent, httpx.Response, bool]] = []

    async def work(number: int, http: httpx.AsyncClient) -> None:
        while queue:
            index, sent = queue.pop()
            as_array = len(sent) > 1 or index % 2 == 1
            response = await http.post("/v1/charge", json=payload(sent, user, as_array))
            answers.append((sent, response, as_array))

    async def on(server: Server, share: int) -> None:
        await clients(server, share, work)

    shares = [count // len(servers)] * len(servers)
    await asyncio.gather(*(on(s, n) for s, n in zip(servers, shares, strict=True)))
    return answers


def check_one_balance_race(answers: list[tuple[Sent, httpx.Response, bool]],
                           start: Decimal) -> list[dict[str, Any]]:
    """Each answer its request's; exactly start / PRICE charged, each leaving a balance of
    its own (never below 0); the others refused for the balance. The charged results."""
    charged: list[dict[str, Any]] = []
    for sent, response, as_array in answers:
        for r in results_of(sent, as_array, response):
            assert r["replayed"] is False
            if r["status"] == "charged":
                assert r["cost"] == PRICE
                charged.append(r)
            else:
                assert (r["status"], r["reason"]) == ("rejected", "insufficient_credits"), r
                if not as_array:
                    assert response.status_code == 402
    possible = int(start / PRICE)
    assert len(charged) == possible
    assert sorted(r["balance"] for r in charged) == [start - PRICE * k
                                                     for k in range(possible, 0, -1)]
    return charged


# -- 1. one balance, raced -----------------------------------------------------------------


def test_clients_racing_one_balance_charge_it_exactly_to_zero(
        funded: Any, db_url: str, tmp_path: Path) -> None:
    ids = [f"race-{n}" for n in range(400)]  # bob's 10 credits pay for 200
    requests = in_chunks(ids, seed=1)
    with running(db_url, tmp_path) as server, server.client() as http:
        answers = asyncio.run(send_all([server], requests, "bob"))
        after = account(http, "bob")
    assert sorted(i for sent, _, _ in answers for i in sent) == sorted(ids)
    charged = check_one_balance_race(answers, Decimal(10))
    assert (after["balance"], after["held"]) == (0, 0)
    assert cli_balance(funded, "bob") == 0
    log = charged_refs(funded, "bob")
    assert log == Counter(r["id"] for r in charged)  # each charged once, as answered
    assert verified(funded)


# -- 2. one message id, sent by several clients at once --------------------------------------


def test_one_id_sent_by_several_clients_at_once_is_charged_once(
        funded: Any, db_url: str, tmp_path: Path) -> None:
    rounds, senders = 12, 8

    async def race(server: Server) -> list[list[tuple[str, dict[str, Any]]]]:
        seen: list[list[tuple[str, dict[str, Any]]]] = []
        https = [server.async_client(limits=httpx.Limits(max_connections=1))
                 for _ in range(senders)]
        try:
            for n in range(rounds):
                msg_id = f"dup-{n}"

                async def send(k: int, msg_id: str = msg_id) -> list[tuple[str, dict[str, Any]]]:
                    # an object, an array of one, or an array with the id twice
                    shape = k % 3
                    data: Any = (message(msg_id) if shape == 0 else [message(msg_id)] * shape)
                    response = await https[k].post("/v1/charge", json=data)
                    assert response.status_code == 200, response.text
                    doc = body(response)
                    return [(f"{k}/{shape}", r) for r in (doc["results"] if shape else [doc])]

                answers = await asyncio.gather(*(send(k) for k in range(senders)))
                seen.append([a for answer in answers for a in answer])
        finally:
            for client in https:
                await client.aclose()
        return seen

    with running(db_url, tmp_path) as server, server.client() as http:
        seen = asyncio.run(race(server))
        after = account(http, "bob")
    for n, answers in enumerate(seen):
        firsts = [r for _, r in answers if not r["replayed"]]
        assert len(firsts) == 1, answers
        [first] = firsts
        assert (first["id"], first["status"], first["cost"]) == (f"dup-{n}", "charged", PRICE)
        assert first["balance"] == Decimal(10) - PRICE * (n + 1)
        for who, r in answers:  # every other answer is the first one, replayed
            same = {k: v for k, v in r.items() if k not in ("replayed", "message")}
            assert same == {k: v for k, v in first.items()
                            if k not in ("replayed", "message")}, who
    assert after["balance"] == Decimal(10) - PRICE * rounds
    assert charged_refs(funded, "bob") == Counter(f"dup-{n}" for n in range(rounds))
    assert verified(funded)


# -- 3. group commit -------------------------------------------------------------------------


def metric(text: str, name: str) -> Decimal:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return Decimal(match.group(1))


def test_concurrent_requests_share_transactions_and_a_lone_one_waits_for_none(
        funded: Any, db_url: str, tmp_path: Path) -> None:
    per_client, count = 8, 32

    async def burst(server: Server) -> None:
        async def work(number: int, http: httpx.AsyncClient) -> None:
            for n in range(per_client):
                response = await http.post("/v1/charge", json=message(f"g-{number}-{n}",
                                                                      "alice"))
                assert response.status_code == 200, response.text

        await clients(server, count, work)

    with running(db_url, tmp_path) as server, server.client() as http:
        asyncio.run(burst(server))
        page = http.get("/metrics").text
        total = metric(page, "smscredits_batch_messages_sum")
        batches = metric(page, "smscredits_batch_messages_count")
        lone = http.post("/v1/charge", json=message("lone", "alice"))
        later = http.get("/metrics").text
        after = account(http, "alice")
    assert total == per_client * count
    assert total / batches > 1, f"{batches} transactions for {total} messages"
    assert lone.status_code == 200 and body(lone)["id"] == "lone"
    # the lone request went at once, alone: one more transaction, of one message
    assert metric(later, "smscredits_batch_messages_count") == batches + 1
    assert metric(later, "smscredits_batch_messages_sum") == total + 1
    assert after["balance"] == Decimal(100) - PRICE * (per_client * count + 1)
    assert verified(funded)


# -- 4, 5. a signal in the middle of a load ----------------------------------------------------


async def load_until_gone(server: Server, count: int, kill_after: int, sig: int
                          ) -> tuple[dict[str, tuple[int, Any]], list[Sent]]:
    """Clients charge alice, each message id new, until the server stops answering (half of
    them one message a request, half an array of ten); ``sig`` goes to the server once
    ``kill_after`` messages were answered. Each message's answer (HTTP status, its result),
    and the requests left unanswered."""
    answered: dict[str, tuple[int, Any]] = {}
    unanswered: list[Sent] = []
    enough = asyncio.Event()

    async def work(number: int, http: httpx.AsyncClient) -> None:
        size = 1 if number % 2 else 10
        for n in range(100_000):
            sent = [f"s-{number}-{n}-{k}" for k in range(size)]
            try:
                response = await http.post("/v1/charge",
                                           json=payload(sent, "alice", size > 1))
            except httpx.TransportError:
                unanswered.append(sent)
                return
            for msg_id, r in zip(sent, results_of(sent, size > 1, response), strict=True):
                answered[msg_id] = (response.status_code, r)
            if len(answered) >= kill_after:
                enough.set()

    async def stop() -> None:
        await enough.wait()
        server.proc.send_signal(sig)

    await asyncio.gather(clients(server, count, work), stop())
    return answered, unanswered


def check_after_signal(cli: Any, db_url: str, tmp_path: Path, sig: int) -> None:
    start = Decimal(100)
    server = start_server(db_url, tmp_path)
    answered, unanswered = asyncio.run(load_until_gone(server, 8, 300, sig))
    code = server.proc.wait(DRAIN_S)
    assert code == (0 if sig == signal.SIGTERM else -sig), server.log_text()

    log = charged_refs(cli, "alice")
    committed = set(log)
    lost = {i for sent in unanswered for i in sent}
    assert max(log.values()) == 1
    for msg_id, (status, r) in answered.items():  # every answer given was committed
        assert status == 200, r
        assert (r["id"], r["status"], r["cost"], r["replayed"]) == (
            msg_id, "charged", PRICE, False)
        assert msg_id in committed
    assert committed <= set(answered) | lost
    for sent in unanswered:  # a request is committed whole or not at all
        assert len(committed & set(sent)) in (0, len(sent)), sent
    assert cli_balance(cli, "alice") == start - PRICE * len(committed)
    assert verified(cli)

    # Re-sent after a restart: the committed ones replay their first result, the others
    # are charged now; either way each message is charged once.
    with running(db_url, tmp_path) as again, again.client() as http:
        for msg_id in sorted(set(answered) | lost):
            response = http.post("/v1/charge", json=message(msg_id, "alice"))
            assert response.status_code == 200, response.text
            doc = body(response)
            assert (doc["status"], doc["cost"]) == ("charged", PRICE)
            assert doc["replayed"] is (msg_id in committed), msg_id
            if msg_id in answered:
                assert doc["balance"] == answered[msg_id][1]["balance"]
        final = account(http, "alice")
    assert final["balance"] == start - PRICE * (len(answered) + len(lost))
    assert charged_refs(cli, "alice") == Counter(set(answered) | lost)
    assert verified(cli)


def test_sigterm_during_load_loses_no_answered_charge(
        funded: Any, db_url: str, tmp_path: Path) -> None:
    check_after_signal(funded, db_url, tmp_path, signal.SIGTERM)


def test_sigkill_during_load_leaves_whole_transactions(
        funded: Any, db_url: str, tmp_path: Path) -> None:
    check_after_signal(funded, db_url, tmp_path, signal.SIGKILL)


# -- 6. holds ended by racing settle, void and delivery reports --------------------------------


def test_settle_void_and_duplicate_reports_racing_end_each_hold_once(
        funded: Any, db_url: str, tmp_path: Path) -> None:
    ids = [f"h-{n}" for n in range(30)]
    # (what, how): each hold gets all of these at once, each from its own client
    acts: list[tuple[str, Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]]]] = [
        ("settle", lambda http, i: http.post("/v1/settle", json={"id": i})),
        ("void", lambda http, i: http.post("/v1/void", json={"id": i})),
        ("delivered", lambda http, i: http.get("/v1/dlr/kannel", params={"id": i, "status": 1})),
        ("failed", lambda http, i: http.get("/v1/dlr/kannel", params={"id": i, "status": 2})),
        ("delivered", lambda http, i: http.get("/v1/dlr/kannel", params={"id": i, "status": 1})),
        ("failed", lambda http, i: http.post("/v1/dlr/kannel", params={"id": i, "status": 2})),
    ]

    async def race(server: Server) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        https = [server.async_client(limits=httpx.Limits(max_connections=1)) for _ in acts]
        seen: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        try:
            held = await https[0].post("/v1/hold", json=[message(i) for i in ids])
            assert [r["status"] for r in body(held)["results"]] == ["held"] * len(ids)
            for i in ids:
                order = list(range(len(acts)))
                random.Random(i).shuffle(order)  # who is sent first varies

                async def act(k: int, i: str = i) -> tuple[str, dict[str, Any]]:
                    what, how = acts[k]
                    response = await how(https[k], i)
                    assert response.status_code == 200, (what, response.text)
                    doc: dict[str, Any] = body(response)
                    assert doc["id"] == i
                    return what, doc

                seen[i] = list(await asyncio.gather(*(act(k) for k in order)))
        finally:
            for client in https:
                await client.aclose()
        return seen

    with running(db_url, tmp_path) as server, server.client() as http:
        seen = asyncio.run(race(server))
        after = account(http, "bob")
        journal = body(http.get("/v1/users/bob/events",
                                params={"all": "1", "limit": "1000"}))["events"]

    kinds: dict[str, list[str]] = {i: [] for i in ids}
    for event in reversed(journal):
        if event["ref"] in kinds:
            kinds[event["ref"]].append(event["kind"])
    settled = refunded = 0
    for i in ids:
        ends = [k for k in kinds[i] if k in ("message.settled", "message.voided")]
        assert kinds[i][0] == "message.held"
        assert len(ends) == 1, (i, kinds[i])  # each hold ends once
        firsts = [(what, r["status"]) for what, r in seen[i] if not r["replayed"]]
        end = ends[0].removeprefix("message.")
        # one answer ended it, and said so; a void after a settle is the one refund
        assert [s for _, s in firsts if s in ("settled", "voided")] == [end], seen[i]
        if "message.refunded" in kinds[i]:
            assert end == "settled" and kinds[i].count("message.refunded") == 1
            assert ("void", "refunded") in firsts, seen[i]
            refunded += 1
        else:
            assert len(firsts) == 1, seen[i]
        settled += end == "settled"
    assert after["held"] == 0
    assert after["balance"] == Decimal(10) - PRICE * (settled - refunded)
    assert verified(funded)


# -- 7. two servers on one Postgres database ---------------------------------------------------


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # several writers
@pytest.mark.parametrize("how", ["two-processes", "workers-2"])
def test_two_servers_racing_one_balance_never_overdraw(
        funded: Any, db_url: str, tmp_path: Path, how: str) -> None:
    ids = [f"pg-{n}" for n in range(400)]
    requests = in_chunks(ids, seed=7)
    if how == "two-processes":
        servers = [start_server(db_url, tmp_path), start_server(db_url, tmp_path)]
    else:
        servers = [start_server(db_url, tmp_path, args=["--workers", "2"])]
    try:
        answers = asyncio.run(send_all(servers, requests, "bob"))
        with servers[0].client() as http:
            after = account(http, "bob")
    finally:
        codes = [s.stop() for s in servers]
    assert codes == [0] * len(servers), [s.log_text() for s in servers]
    charged = check_one_balance_race(answers, Decimal(10))
    assert (after["balance"], after["held"]) == (0, 0)
    assert charged_refs(funded, "bob") == Counter(r["id"] for r in charged)
    assert verified(funded)


# -- 8. the CLI beside the service ----------------------------------------------------------


def test_admin_commands_beside_the_service_lose_no_update(
        funded: Any, db_url: str, tmp_path: Path) -> None:
    adds, late_wanted = 3, 40  # credits added, one at a time; charges sent once disabled
    assert funded("credits", "add", "alice", "900").exit_code == 0  # never short of credits
    answers: list[tuple[bool, int, Any]] = []  # (sent after `user disable` returned, ...)
    added = disabled = False
    late = 0
    flowing = asyncio.Event()  # set once charges are being answered
    # Set by a charge sent once the adds had returned: it lies after them in the log, so the
    # adds fall among the charges however the machine schedules the processes.
    charged_after_adds = asyncio.Event()

    async def work(number: int, http: httpx.AsyncClient) -> None:
        nonlocal late
        n = 0
        while late < late_wanted:
            n += 1
            after_adds, after_disable = added, disabled
            response = await http.post("/v1/charge", json=message(f"a-{number}-{n}", "alice"))
            answers.append((after_disable, response.status_code, body(response)))
            late += after_disable
            if len(answers) >= 50:
                flowing.set()
            if after_adds and response.status_code == 200:
                charged_after_adds.set()

    def admin(*args: str) -> None:  # the CLI in a thread: its own connection, beside serve's
        run = funded(*args, "--actor", "admin")
        assert run.exit_code == 0, run.stderr

    async def admin_side() -> None:
        nonlocal added, disabled
        await flowing.wait()
        for _ in range(adds):
            await asyncio.to_thread(admin, "credits", "add", "alice", "1")
        added = True
        await charged_after_adds.wait()
        await asyncio.to_thread(admin, "user", "disable", "alice")
        disabled = True

    async def load(server: Server) -> None:
        await asyncio.gather(clients(server, 4, work), admin_side())

    with running(db_url, tmp_path) as server, server.client() as http:
        asyncio.run(load(server))
        after = account(http, "alice")
    charged = [doc for _, status, doc in answers if status == 200]
    assert charged and all(doc["status"] == "charged" and not doc["replayed"]
                           for doc in charged)
    refused = [(was_late, status, doc) for was_late, status, doc in answers if status != 200]
    assert all(status == 409 and doc["error"]["code"] == "user_disabled"
               for _, status, doc in refused), refused[:3]
    assert all(status == 409 for was_late, status, _ in answers if was_late)
    expected = Decimal(1000) + adds - PRICE * len(charged)
    assert after["balance"] == expected and after["disabled"] is True
    assert cli_balance(funded, "alice") == expected
    log = credit_log(funded, "alice")[::-1]  # oldest first
    assert Counter(r["ref"] for r in log if r["kind"] == "message.charged") == Counter(
        doc["id"] for doc in charged)
    # the adds fell among the charges, and each change starts from the one before it
    adds_at = [n for n, r in enumerate(log)
               if r["kind"] == "credits.added" and r["actor"] == "admin"]
    assert len(adds_at) == adds
    assert log[adds_at[0] - 1]["kind"] == "message.charged"
    assert any(r["kind"] == "message.charged" for r in log[adds_at[-1]:])
    for before, row in itertools.pairwise(log):
        assert row["balance_after"] == before["balance_after"] + row["amount"], row
    assert verified(funded)


# -- two servers inserting the same new ids at the same moment -------------------------------


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # several writers
def test_two_servers_writing_the_same_new_ids_in_opposite_orders_answer_both(
        funded: Any, db_url: str, tmp_path: Path) -> None:
    """A gateway's batch sent to two workers (a retry elsewhere, two gateways), the ids in
    opposite orders, meeting a third writer that holds one of the ids for a moment and then
    gives it up (its transaction rolled back): each message is recorded once and both
    requests are answered, one with the results, the other replaying them. carol has no
    credits power: her charges lock no power row first, so nothing queues the two."""
    import psycopg

    assert funded("user", "add", "carol").exit_code == 0
    assert funded("charge", "carol", "--to", TO, "--text", "hi", "--id", "seed").exit_code == 0
    ids = [f"both-{n:03}" for n in range(500)]
    servers = [start_server(db_url, tmp_path), start_server(db_url, tmp_path)]
    conninfo = db_url.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(conninfo) as third, ThreadPoolExecutor(2) as pool:
            # the third writer: the message in the middle, recorded but not yet committed
            third.execute("CREATE TEMP TABLE middle AS SELECT * FROM messages WHERE id = 'seed'")
            third.execute("UPDATE middle SET id = %s", (ids[250],))
            third.execute("INSERT INTO messages SELECT * FROM middle")

            def send(server: Server, order: list[str]) -> httpx.Response:
                with server.client() as http:
                    return http.post("/v1/charge", json=[message(i, "carol") for i in order])

            sent = [pool.submit(send, servers[0], ids), pool.submit(send, servers[1], ids[::-1])]
            waiting = 0
            while waiting < 2:  # both batches wait for the third's message, half written
                row = third.execute("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                    "AND locktype = 'transactionid'").fetchone()
                waiting = row[0] if row else 0
            third.rollback()
            answers = [future.result() for future in sent]
    finally:
        codes = [s.stop() for s in servers]
    assert codes == [0, 0]
    assert [a.status_code for a in answers] == [200, 200], [a.text[:300] for a in answers]
    results = [r for a, order in zip(answers, (ids, ids[::-1]), strict=True)
               for r in results_of(order, True, a)]
    assert Counter(r["id"] for r in results if not r["replayed"]) == Counter(ids)
    assert all(r["status"] == "charged" and r["metered"] is False for r in results)
    assert verified(funded)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # a backend to terminate
def test_a_dropped_database_connection_fails_no_charge(
        funded: Any, db_url: str, tmp_path: Path) -> None:
    """Postgres restarted, a proxy's idle timeout, an admin's pg_terminate_backend: the
    service's connections go, the database stays. The next charge is charged."""
    import uuid

    import psycopg

    name = "serve-" + uuid.uuid4().hex[:12]  # the service's connections, and no others
    conninfo = db_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with running(f"{db_url}&application_name={name}", tmp_path) as server, \
            server.client() as http:
        assert http.post("/v1/charge", json=message("before")).status_code == 200
        with psycopg.connect(conninfo, autocommit=True) as admin:
            dropped = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE application_name = %s", (name,)).fetchall()
        assert dropped
        after = http.post("/v1/charge", json=message("after"))
        again = http.post("/v1/charge", json=message("after"))
    assert again.status_code == 200  # the service itself recovers
    assert after.status_code == 200, after.text
    assert body(after)["replayed"] is False


# -- clients that go away, and a request bigger than a group ----------------------------------


def test_clients_that_go_away_before_their_answer_leave_whole_accounts(
        funded: Any, db_url: str, tmp_path: Path) -> None:
    """Gateways time out and hang up while their charges are in a batch: the service goes
    on, what it charged stays charged once, and a re-sent id replays it."""
    impatient = httpx.Timeout(5, read=0.001)
    sent: list[str] = []

    async def hang_up(server: Server) -> None:
        async def work(number: int, http: httpx.AsyncClient) -> None:
            for n in range(25):
                msg_id = f"gone-{number}-{n}"
                sent.append(msg_id)
                with contextlib.suppress(httpx.TimeoutException):
                    await http.post("/v1/charge", json=message(msg_id, "alice"),
                                    timeout=impatient)

        await clients(server, 8, work)

    with running(db_url, tmp_path) as server, server.client() as http:
        asyncio.run(hang_up(server))
        # Each id again, patiently: charged now or a replay of what was charged then
        answers = [body(http.post("/v1/charge", json=message(i, "alice"))) for i in sent]
        after = account(http, "alice")
    assert all(a["status"] == "charged" and a["cost"] == PRICE for a in answers)
    first = [a["id"] for a in answers if not a["replayed"]]
    log = charged_refs(funded, "alice")
    assert log == Counter(sent)  # each charged once, whenever
    assert after["balance"] == Decimal(100) - PRICE * len(sent)
    assert len(first) < len(sent)  # some were charged while their client was gone
    assert verified(funded)


def test_a_request_bigger_than_a_group_goes_alone_and_the_small_ones_beside_it_are_answered(
        funded: Any, db_url: str, tmp_path: Path) -> None:
    """A 6000-message array (over the 5000 a group takes) among small requests: each gets
    its own results, in order; alice's 100 credits pay for exactly 2000 of all of them."""
    big = [f"big-{n}" for n in range(6000)]
    small = in_chunks([f"small-{n}" for n in range(300)], seed=3)

    async def burst(server: Server) -> list[tuple[Sent, httpx.Response, bool]]:
        async def send_big() -> tuple[Sent, httpx.Response, bool]:
            async with server.async_client() as http:
                return big, await http.post("/v1/charge", json=payload(big, "alice", True)), True

        got, answers = await asyncio.gather(send_big(), send_all([server], small, "alice"))
        return [got, *answers]

    with running(db_url, tmp_path) as server, server.client() as http:
        answers = asyncio.run(burst(server))
        page = http.get("/metrics").text
    check_one_balance_race(answers, Decimal(100))
    assert metric(page, "smscredits_batch_messages_sum") == len(big) + 300
    # one transaction over 5000 messages: the big request's, with no other beside it
    over = (metric(page, "smscredits_batch_messages_count")
            - metric(page, 'smscredits_batch_messages_bucket{le="5000.0"}'))
    assert over == 1
    assert verified(funded)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the engine plays no part
def test_sigterm_is_not_held_up_for_ever_by_a_client_that_stops_mid_body(
        funded: Any, db_url: str, tmp_path: Path) -> None:
    """A gateway host that hangs (or a peer that means harm) has sent a request's headers
    and half its body. A restart's SIGTERM still ends the service: the others' charges
    are drained, and serve exits 0 within 15 s, as a supervisor expects."""
    import socket

    server = start_server(db_url, tmp_path)
    host, port = server.url.removeprefix("http://").split(":")
    stalled = socket.create_connection((host, int(port)))
    try:
        with server.client() as http:
            stalled.sendall(b"POST /v1/charge HTTP/1.1\r\nHost: serve\r\nContent-Type: "
                            b"application/json\r\nContent-Length: 100\r\n\r\n{\"user\": ")
            assert http.post("/v1/charge", json=message("beside")).status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(15)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        stalled.close()
        server.stop()
    assert code == 0, server.log_text()[-500:]
    assert charged_refs(funded, "bob") == Counter(["beside"])
