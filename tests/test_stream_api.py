"""Gateway code streams charges through the same function as `charge --file`."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

from smscredits import ledger, pricing, reads
from smscredits.charging import BatchSummary, Charger
from smscredits.charging.stream import charge_lines

TO = "+36301234567"


def test_charge_lines_answers_every_line_in_order_and_counts_them(db: Any) -> None:
    pricing.set_price(db, "default", "1")
    ledger.add_user(db, "alice")
    ledger.create_power(db, "alice", initial=3_000)
    lines = [json.dumps({"user": "alice", "to": TO, "parts": 2, "id": "s-1"}), "",
             json.dumps({"user": "alice", "to": TO, "parts": 2, "id": "s-2"}),
             json.dumps({"user": "alice", "to": TO, "parts": 2, "id": "s-1"})]
    stream = io.BytesIO("\n".join(lines).encode())
    summary, seen = BatchSummary(), []
    with Charger(db) as charger:
        texts = list(charge_lines(charger, stream, summary, progress=seen.append))
    results = [json.loads(line, parse_float=Decimal) for t in texts for line in t.splitlines()]
    assert [(r["line"], r["status"], r["reason"]) for r in results] == [
        (1, "charged", None), (2, "error", "bad_input"),
        (3, "rejected", "insufficient_credits"), (4, "charged", None)]
    assert results[2]["refusal"] == {"cost": 2, "available": 1, "balance": 1, "overdraft": 0}
    assert results[3]["replayed"] is True
    assert (summary.lines, summary.charged, summary.replayed, summary.rejected,
            summary.errors) == (4, 1, 1, 1, 1)
    assert sum(seen) == len(stream.getvalue()) + 1  # every byte read, and a newline per line
    assert reads.get_account(db, "alice").balance == Decimal(1)
