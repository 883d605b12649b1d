"""Micro-benchmark of the JSON writer: ``charge --file`` result lines and ``to_json``.

    python bench/json_lines.py [--n 200000] [--repeat 5]

Prints the best of ``--repeat`` runs per case, in lines per second and microseconds per
line. To compare two checkouts, run it with each on PYTHONPATH, e.g.
``PYTHONPATH=/work/main python bench/json_lines.py``.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from smscredits.charging import ChargeResult
from smscredits.render import charge_line, to_json


def charged(i: int) -> ChargeResult:
    return ChargeResult("charged", f"msg-{i:08d}", f"user{i % 10_000:05d}", "+36301234567",
                        cost=Decimal(50).scaleb(-3), parts=1, encoding=None,
                        price=Decimal(50).scaleb(-3), rule="+3630", country="HU",
                        balance=Decimal(999_950_000 - 50 * i).scaleb(-3))


def refused(i: int) -> ChargeResult:
    numbers = {"cost": Decimal(50).scaleb(-3), "available": Decimal(20).scaleb(-3),
               "balance": Decimal(20).scaleb(-3), "overdraft": Decimal(0).scaleb(-3)}
    return ChargeResult("rejected", f"msg-{i:08d}", f"user{i % 10_000:05d}", "+36301234567",
                        reason="insufficient_credits",
                        message="insufficient credits: cost 0.050, available 0.020 "
                                "(balance 0.020, overdraft 0.000)",
                        cost=Decimal(50).scaleb(-3), parts=1, encoding="GSM-7",
                        price=Decimal(50).scaleb(-3), rule="+3630", country="HU",
                        balance=Decimal(20).scaleb(-3), refusal=numbers)


def event(i: int) -> dict[str, Any]:
    return {"id": i, "at": "2026-11-25T10:00:00.123456Z", "kind": "message.charged",
            "actor": "gateway", "user": f"user{i % 10_000:05d}", "amount": Decimal(-50).scaleb(-3),
            "balance_after": Decimal(999_950_000).scaleb(-3), "ref": f"msg-{i:08d}",
            "detail": {"to": "+36301234567", "parts": 1, "rule": "+3630"}}


def run(name: str, items: list[Any], write: Callable[[list[Any]], object],
        repeat: int) -> None:
    best = min(timeit.repeat(lambda: write(items), number=1, repeat=repeat))
    n = len(items)
    print(f"{name:<28} {n / best:>12,.0f} lines/s {best / n * 1e6:>8.3f} us/line")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    def lines(results: list[ChargeResult]) -> str:
        # As charging.stream writes a batch.
        return "".join([charge_line(r, n) + "\n" for n, r in enumerate(results, 1)])

    run("charge_line charged", [charged(i) for i in range(args.n)], lines, args.repeat)
    run("charge_line refused", [refused(i) for i in range(args.n)], lines, args.repeat)
    run("to_json event (jsonl)", [event(i) for i in range(args.n)],
        lambda docs: [to_json(d) for d in docs], args.repeat)
    run("to_json events (indent=2)", [event(i) for i in range(args.n)],
        lambda docs: to_json(docs, indent=2), args.repeat)


if __name__ == "__main__":
    main()
