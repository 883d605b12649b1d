"""Charging messages: one debit per message, within balance, overdraft and every limit.

A batch of messages is one transaction. Its accounts are read once, locked: on SQLite the
write transaction (``BEGIN IMMEDIATE``) already excludes every other writer, on Postgres the
power rows are taken ``FOR UPDATE`` in one fixed order. With the rows held, each message's
checks (balance, overdraft, the three limit windows) and debit are done in memory, in input
order; at the end the batch writes its message rows and events in bulk and each touched
power row once. A batch commits before any of its results is reported, so a reported charge
is durable and an interrupted batch leaves nothing behind. (``Charger.begin`` lets a big
batch's commit run on a second thread while the caller reads on; its results wait for it.)

Time: a batch takes its instant once its accounts are held, and a charge is stamped no
earlier than its account's latest event (``powers.last_at``; ``journal.stamp``). A batch that
waited behind another that committed after midnight, or a host whose clock is seconds behind
another's, thus charges into the newer day: an account's events never go back in time, so its
window counters never move backwards and never exceed their limits.

The package, by concept:

- ``model``: ``ChargeRequest``, ``ChargeResult`` and their checks, ``BatchSummary``;
- ``rule``: the charge rule applied to a held power row (balance, overdraft, ``limits``);
- ``batch``: one transaction's charges, ``Batch``; its statements are in
  ``storage.charge_sql``;
- ``charger``: ``Charger``, the transactions, retries and the commit thread;
- ``stream``: ``charge_lines``, a stream of JSON lines charged in batches (``charge --file``);
- ``refund``: ``refund``.
"""

from __future__ import annotations

from smscredits.charging.charger import Charger, Pending
from smscredits.charging.model import (
    BULK_BATCH,
    EXIT_FOR,
    BatchSummary,
    ChargeRequest,
    ChargeResult,
    request_problem,
)
from smscredits.charging.refund import Refund, refund

__all__ = ["BULK_BATCH", "EXIT_FOR", "BatchSummary", "ChargeRequest", "ChargeResult", "Charger",
           "Pending", "Refund", "refund", "request_problem"]
