"""Micro-benchmark of the JSON writer: ``charge --file`` result lines and ``to_json``.

    python bench/json_lines.py [--n 200000] [--repeat 5] [--against OLD/render.py]

Prints the best of ``--repeat`` runs per case, in microseconds of CPU time per line (CPU
time: the machine may be shared). ``--against`` loads another version of
``smscredits/render.py`` (e.g. ``git show main:smscredits/render.py > /tmp/render_main.py``)
and times it in the same process, runs taking turns, so that both see the same load; the
last column is new / old.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from smscredits import render
from smscredits.amounts import to_decimal
from smscredits.charging import ChargeResult

# As the charger gives them: a charge's cost and price are the Decimals of a cached quote,
# the same objects line after line; its balance is a new one.
QUOTES = [(to_decimal(50 * parts), to_decimal(50)) for parts in (1, 2)]


def charged(i: int, quotes: int = 1) -> ChargeResult:
    cost, price = QUOTES[i % quotes]
    return ChargeResult("charged", f"msg-{i:08d}", f"user{i % 10_000:05d}", "+36301234567",
                        cost=cost, parts=1, encoding=None, price=price, rule="+3630",
                        country="HU", balance=to_decimal(999_950_000 - 50 * i))


def refused(i: int) -> ChargeResult:
    numbers = {"cost": to_decimal(50), "available": to_decimal(20), "balance": to_decimal(20),
               "overdraft": to_decimal(0)}
    return ChargeResult("rejected", f"msg-{i:08d}", f"user{i % 10_000:05d}", "+36301234567",
                        reason="insufficient_credits",
                        message="insufficient credits: cost 0.05, available 0.02 "
                                "(balance 0.02, overdraft 0)",
                        cost=QUOTES[0][0], parts=1, encoding="GSM-7", price=QUOTES[0][1],
                        rule="+3630", country="HU", balance=to_decimal(20), refusal=numbers)


def event(i: int) -> dict[str, Any]:
    return {"id": i, "at": "2026-11-25T10:00:00.123456Z", "kind": "message.charged",
            "actor": "gateway", "user": f"user{i % 10_000:05d}", "amount": to_decimal(-50),
            "balance_after": to_decimal(999_950_000), "ref": f"msg-{i:08d}",
            "detail": {"to": "+36301234567", "parts": 1, "rule": "+3630"}}


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_against", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


Case = Callable[[ModuleType, list[Any]], object]


def run(name: str, items: list[Any], case: Case, modules: list[ModuleType], repeat: int) -> None:
    best = [float("inf")] * len(modules)
    for _ in range(repeat):
        for i, module in enumerate(modules):
            start = time.process_time()
            case(module, items)
            best[i] = min(best[i], time.process_time() - start)
    figures = "".join(f"{t / len(items) * 1e6:>10.3f}" for t in best)
    ratio = f"{best[0] / best[1]:>8.3f}" if len(best) == 2 else ""
    print(f"{name:<32}{figures}{ratio}")


def lines(module: ModuleType, results: list[ChargeResult]) -> str:
    """As charging.stream writes a batch."""
    line = module.charge_line
    return "".join([line(r, n) + "\n" for n, r in enumerate(results, 1)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--against", help="another version of smscredits/render.py")
    args = parser.parse_args()
    modules = [render] + ([load(args.against)] if args.against else [])
    print(f"{'us per line':<32}" + "".join(f"{m:>10}" for m in ["new", "old"][:len(modules)])
          + ("  new/old" if args.against else ""))
    n, repeat = args.n, args.repeat
    run("charge_line charged", [charged(i) for i in range(n)], lines, modules, repeat)
    # Two quotes taking turns: a new cost and price on every line.
    run("charge_line charged, 2 quotes", [charged(i, 2) for i in range(n)], lines, modules,
        repeat)
    run("charge_line refused", [refused(i) for i in range(n)], lines, modules, repeat)
    run("to_json event (jsonl)", [event(i) for i in range(n)],
        lambda m, docs: [m.to_json(d) for d in docs], modules, repeat)
    run("to_json events (indent=2)", [event(i) for i in range(n)],
        lambda m, docs: m.to_json(docs, indent=2), modules, repeat)


if __name__ == "__main__":
    main()
