"""Holds: credits reserved when a message is submitted, settled or voided when its delivery
report comes, and expired when none comes.

A message's life, one state at a time (the ``messages.status`` column):

    held ──settle──▶ settled ──void (void_settled = refund)──▶ refunded
      │
      ├──void──▶ voided
      └──expiry (hold_expiry)──▶ settled or voided

- **hold**: the cost is reserved: ``powers.held`` grows, the balance does not move, and the
  limit windows count it as a charge would (a hold is refused for every reason a charge is).
  What a charge or a hold can take is ``balance - held + overdraft``.
- **settle** (``--parts N`` when the SMSC split the message otherwise): the cost is
  recomputed at the price that held. Less than held: the difference goes back (balance and
  the hold's windows, while they are current). More: the difference is taken if balance,
  overdraft and limits allow it; if not, the message is settled at the held amount and the
  result says so (``reason`` ``settled_at_held``): a hold is a promise of at most that much.
- **void**: the hold is released: ``held`` shrinks and the hold's windows get the cost back
  while they are current (a window that has ended keeps it, as a refund's does). A void of
  a settled message is a refund, or refused with ``void_settled = refuse``.
- **expiry**: a hold older than its ttl (``hold_ttl``, or ``--ttl`` per hold) is settled at
  the held amount or voided (``hold_expiry``) by ``holds expire``.
- **delivery reports** map a gateway's status to settle, void or nothing (``dlr_action``).
  A report for a message already settled or voided changes nothing and answers with that
  first outcome: reports come twice and out of order, and only an explicit ``void``
  refunds a settled message.

Every step is one event (``message.held``, ``message.settled``, ``message.voided``,
``message.expired``) chained on the account's journal; ``verify`` replays ``held`` from them.
This module holds the pure rules; the batch applies them to held rows (``charging.batch``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from smscredits.errors import BadInput

SETTLE, VOID, IGNORE = "settle", "void", "ignore"
ACTIONS = (SETTLE, VOID, IGNORE)
SOURCES = ("kannel", "jasmin", "smpp")

# The default meaning of each gateway's delivery status. Kannel's %d is one of its DLR
# types: 1 delivered to the phone, 2 not delivered, 4 queued on the SMSC, 8 accepted by the
# SMSC, 16 rejected by the SMSC. Jasmin passes the SMPP receipt's stat (DELIVRD...) or, for
# the submit response, the command status (ESME_ROK, or an ESME_R* error). SMPP 3.4's
# message states: DELIVRD, EXPIRED, DELETED, UNDELIV, ACCEPTD (accepted on the subscriber's
# behalf: final), UNKNOWN, REJECTD; ENROUTE is not final.
_SMPP = {"DELIVRD": SETTLE, "ACCEPTD": SETTLE, "EXPIRED": VOID, "DELETED": VOID,
         "UNDELIV": VOID, "REJECTD": VOID, "UNKNOWN": IGNORE, "ENROUTE": IGNORE}
DEFAULT_DLR: dict[str, dict[str, str]] = {
    "kannel": {"1": SETTLE, "2": VOID, "4": IGNORE, "8": IGNORE, "16": VOID},
    "jasmin": {**_SMPP, "ESME_ROK": IGNORE},
    "smpp": dict(_SMPP),
}
# A Jasmin ESME_R* status other than ESME_ROK is a refused submit: nothing was sent.
_ESME_ERROR = re.compile(r"ESME_R[A-Z0-9]+\Z")

_TTL = re.compile(r"([0-9]{1,9})([smhd])\Z")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL_S = 366 * 86400
DEFAULT_TTL = "48h"


def parse_ttl(text: str) -> int:
    """A hold's time to live, ``90s``, ``30m``, ``48h`` or ``7d``, in microseconds."""
    m = _TTL.match(text.strip())
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)] if m else 0
    if not 0 < seconds <= MAX_TTL_S:
        raise BadInput(f"bad ttl {text!r}: expected a number and s, m, h or d (90s, 30m, 48h,"
                       " 7d), at most 366d", code="bad_ttl")
    return seconds * 1_000_000


def parse_age(text: str) -> int:
    """An age for ``--older-than``: as a ttl, and ``0s`` too (µs)."""
    if text.strip() in ("0", "0s", "0m", "0h", "0d"):
        return 0
    return parse_ttl(text)


def check_action(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise BadInput(f"bad {what} {value!r}: expected one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class Rules:
    """The hold settings in force (``config``): ttl, what expiry does, what a void of a
    settled message does, and the delivery statuses mapped otherwise than by default."""

    ttl_us: int = 48 * 3600 * 1_000_000
    expiry: str = SETTLE  # settle | void
    void_settled: str = "refund"  # refund | refuse
    dlr: dict[tuple[str, str], str] = field(default_factory=dict)  # (source, STATUS) -> action


def normal_status(source: str, status: str) -> str:
    """A delivery status as the mapping keys it: Kannel's a number, the others upper case."""
    text = status.strip()
    if source == "kannel" and text.isascii() and text.isdigit() and len(text) <= 9:
        return str(int(text))
    return text.upper()


def dlr_action(rules: Rules, source: str, status: str) -> str:
    """settle, void or ignore for a delivery status reported by ``source``; an unknown
    status is refused, naming it."""
    check_action(source, SOURCES, "report source")
    key = normal_status(source, status)
    if (source, key) in rules.dlr:
        return rules.dlr[(source, key)]
    known = DEFAULT_DLR[source]
    if key in known:
        return known[key]
    if source == "jasmin" and _ESME_ERROR.match(key):
        return VOID
    if source == "kannel" and key.isascii() and key.isdigit() and len(key) <= 2 \
            and 0 < int(key) < 32:
        # A combination of types: delivered wins, then a failure, else nothing yet.
        bits = int(key)
        return SETTLE if bits & 1 else VOID if bits & 18 else IGNORE
    raise BadInput(f"unknown {source} delivery status {status[:40]!r}: expected one of "
                   f"{', '.join(known)}", code="unknown_status")


def check_setting(key: str, value: str) -> None:
    """Refuse a hold setting's bad value, naming it (``config set``)."""
    from smscredits import config

    if key == "hold_ttl":
        parse_ttl(value)
    elif key == "hold_expiry":
        check_action(value, (SETTLE, VOID), "hold_expiry")
    elif key == "void_settled":
        check_action(value, ("refund", "refuse"), "void_settled")
    elif config.is_dlr_key(key):
        check_action(value, ACTIONS, key)


def rules_from_config() -> Rules:
    """The hold settings in force: flag-less ``config.resolve`` of each, and the file's
    delivery status mappings. A bad value is refused naming the setting."""
    from smscredits import config

    values = {key: config.resolve(key).value or config.DEFAULTS[key]
              for key in ("hold_ttl", "hold_expiry", "void_settled")}
    for key, value in values.items():
        try:
            check_setting(key, value)
        except BadInput as e:
            raise BadInput(f"setting {key}: {e.message}", code=e.code) from None
    dlr = {}
    for key, action in config.dlr_settings().items():
        check_setting(key, action)
        _, source, status = key.split(".", 2)
        dlr[(source, normal_status(source, status))] = action
    return Rules(parse_ttl(values["hold_ttl"]), values["hold_expiry"], values["void_settled"],
                 dlr)
