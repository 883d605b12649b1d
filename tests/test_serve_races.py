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
import json
import random
import re
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

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
