"""`charge --file` as a library: a stream of JSON lines in, one result line per line out.

``charge_lines`` reads a binary stream in batches (whatever a pipe holds now, up to 1000
lines; a file in full batches), parses each line (orjson for a well-formed line, the stdlib
parser for the error message of any other), charges each batch in one transaction through
``Charger.begin`` and yields the batch's result lines once its commit is durable — the next
batch is read and parsed while the commit runs, and what is ready is yielded before any read
that may block. Every line gets exactly one result, in order, a blank or malformed one too.
The CLI's ``charge --file`` is this loop writing to stdout; gateway code can run the same:

    with Charger(open_db(url)) as charger:
        for text in charge_lines(charger, sys.stdin.buffer):
            sys.stdout.write(text)
            sys.stdout.flush()
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Iterator
from io import BufferedIOBase
from typing import Any

from smscredits.charging import (
    BatchSummary,
    Charger,
    ChargeRequest,
    ChargeResult,
    Pending,
    request_problem,
)
from smscredits.charging.model import OPS, MessageOp
from smscredits.config import is_text
from smscredits.errors import BadInput
from smscredits.holds import parse_ttl
from smscredits.pricing import MAX_PARTS
from smscredits.render import charge_line
from smscredits.validate import is_message_id
from smscredits.validate import note as valid_note


def read_batches(stream: BufferedIOBase, size: int = 1000) -> Iterator[list[bytes] | None]:
    """Lines in batches: whatever is available now, up to ``size``.

    ``read1`` returns what one read brings, without waiting for more: a pipe fed one line at
    a time yields one-line batches at once (each is charged and its result flushed before the
    next is awaited). Lines left over from a read wait for the next one only while more input
    is ready (always, in a file): a file yields full batches, not a short one per read.
    ``None`` comes before each read: the moment to write the results that are ready, as the
    read may block (a co-process waits for them before it sends more).
    """
    pending = b""
    carried: list[bytes] = []
    while True:
        yield None
        chunk = stream.read1(1 << 20)
        if not chunk:
            rest = [*carried, pending] if pending else carried  # under ``size`` lines
            if rest:
                yield rest
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if carried:
            lines, carried = carried + lines, []
        whole = len(lines) - len(lines) % size
        for i in range(0, whole, size):
            yield lines[i : i + size]
        if whole < len(lines):
            if _more_ready(stream):
                carried = lines[whole:]
            else:
                yield lines[whole:]


def _more_ready(stream: BufferedIOBase) -> bool:
    """Whether a read now would return at once: a regular file, or a pipe with data."""
    import select
    import stat

    try:
        fd = stream.fileno()
        return stat.S_ISREG(os.fstat(fd).st_mode) or bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):  # no descriptor (a test's BytesIO), or no select on it
        return False


FIELDS = frozenset(("user", "to", "text", "parts", "id"))  # a charge's
# Every field a line may have: a hold's ``ttl`` (90s, 30m, 48h), a report's ``status`` and
# ``from``, a void's or refund's ``note``, and ``op`` (see ``model.OPS``).
ALL_FIELDS = FIELDS | {"op", "ttl", "status", "from", "note"}
# The fields each op takes besides ``op``.
_OP_FIELDS = {
    "charge": FIELDS, "hold": FIELDS | {"ttl"},
    "settle": frozenset(("id", "user", "parts")), "void": frozenset(("id", "user", "note")),
    "refund": frozenset(("id", "note")), "dlr": frozenset(("id", "status", "from")),
}


def parse_line(raw: bytes, lineno: int) -> Any:
    """A ChargeRequest, or an error result naming the line: whatever the bytes, never an
    exception (a co-process's one bad line must not end it)."""
    try:
        return _request(raw)
    except (ValueError, BadInput, RecursionError) as e:
        message = (e.message if isinstance(e, BadInput)
                   else "bad JSON: nested too deeply" if isinstance(e, RecursionError)
                   else f"bad JSON: {e}")
    return ChargeResult("error", None, None, None, reason="bad_input",
                        message=f"line {lineno}: {message}", line=lineno)


def _request(raw: bytes) -> Any:
    """The ChargeRequest of a line, or BadInput (or json's ValueError) saying what is wrong."""
    if not raw.strip():
        raise BadInput("empty line: expected a JSON object")
    try:  # UTF-8 only (a BOM is let be): not json's guess at UTF-16 or encoded surrogates
        line = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInput(f"not UTF-8 text: byte {e.object[e.start]:#04x} at {e.start}") from None
    return request_of(json.loads(line))


def request_of(data: Any) -> ChargeRequest | MessageOp:
    """The ChargeRequest or MessageOp of one decoded JSON line or API object, or BadInput
    naming what is wrong with it."""
    if not isinstance(data, dict):
        raise BadInput("expected a JSON object")
    op = data.get("op", "charge")
    if op not in _OP_FIELDS:
        raise BadInput(f"bad op {str(op)[:40]!r}: expected one of {', '.join(OPS)}")
    unknown = sorted(set(data) - _OP_FIELDS[op] - {"op"})
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5]) + (", ..." if unknown[5:] else "")
        raise BadInput(f"unknown field(s) {shown}" + (f" for op {op!r}" if op != "charge"
                                                      else ""))
    if op not in ("charge", "hold"):
        return _act(op, data)
    user, to, text, parts, msg_id = (data.get(k) for k in ("user", "to", "text", "parts", "id"))
    if not isinstance(user, str) or not isinstance(to, str):
        raise BadInput("user and to must be strings")
    if (text is None) == (parts is None):
        raise BadInput("give exactly one of text and parts")
    if text is not None and not isinstance(text, str):
        raise BadInput("text must be a string")
    if parts is not None and (not isinstance(parts, int) or isinstance(parts, bool)):
        raise BadInput("parts must be a whole number")
    if parts is not None and not 1 <= parts <= MAX_PARTS:
        raise BadInput(f"bad parts {parts if abs(parts) < 10**6 else 'beyond a million'}: "
                       f"must be 1-{MAX_PARTS}")
    if msg_id is not None and not isinstance(msg_id, str):
        raise BadInput("id must be a string")
    ttl = data.get("ttl")
    if ttl is not None and not isinstance(ttl, str):
        raise BadInput("ttl must be a string: 90s, 30m, 48h or 7d")
    req = ChargeRequest(user, to, text, parts, msg_id, hold=op == "hold",
                        ttl=None if ttl is None else parse_ttl(ttl))
    problem = request_problem(req)  # what the charger would refuse as bad input
    if problem is not None:
        raise BadInput(problem)
    return req


def _act(op: str, data: dict[str, Any]) -> MessageOp:
    """A settle, void, refund or report line as a MessageOp, or BadInput naming its fault."""
    msg_id, user, parts = data.get("id"), data.get("user"), data.get("parts")
    if not isinstance(msg_id, str) or not is_message_id(msg_id):
        raise BadInput(f"{op} needs an id: 1-128 printable ASCII characters, no spaces")
    if user is not None and not isinstance(user, str):
        raise BadInput("user must be a string")
    if parts is not None and (type(parts) is not int or not 1 <= parts <= MAX_PARTS):
        raise BadInput(f"bad parts: must be a whole number 1-{MAX_PARTS}")
    if type(data.get("status")) is int:  # Kannel's %d, as a gateway may pass it on
        data["status"] = str(data["status"])
    for key in ("note", "status", "from"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise BadInput(f"{key} must be a string")
    if op == "dlr" and (data.get("status") is None or data.get("from") is None):
        raise BadInput("dlr needs a status and from (kannel, jasmin or smpp)")
    valid_note(data.get("note"))  # as long as the CLI's --note may be
    for key in ("user", "note", "status", "from"):
        if isinstance(data.get(key), str) and ("\x00" in data[key] or not is_text(data[key])):
            raise BadInput(f"bad {key}: a NUL or a lone surrogate")
    return MessageOp(op, msg_id, user=user, parts=parts, status=data.get("status"),
                     source=data.get("from"), note=data.get("note"))


_QUICK_FIELDS = FIELDS | {"op"}
_BARE_ACT = frozenset(("op", "id"))


def quick_request(data: dict[str, Any], op: Any) -> ChargeRequest | MessageOp | None:
    """The request of a decoded object of the shapes a gateway sends most (a charge or hold;
    a settle or void by id alone), checked in one expression; None for anything else, which
    ``request_of`` decides and words. ``op`` is the object's (or the endpoint's). The caller
    sends an object with a NUL in it (escaped: JSON has no raw one) the long way: the charger
    refuses it there in the general words."""
    if (op == "charge" or op == "hold") and data.keys() <= _QUICK_FIELDS:
        user, to, text, parts, msg_id = (data.get("user"), data.get("to"), data.get("text"),
                                         data.get("parts"), data.get("id"))
        if (type(user) is str and type(to) is str
                and ((type(text) is str and parts is None)
                     or (text is None and type(parts) is int and 0 < parts <= MAX_PARTS))
                and (msg_id is None or (type(msg_id) is str and is_message_id(msg_id)))):
            return ChargeRequest(user, to, text, parts, msg_id, op == "hold")
    elif (op == "settle" or op == "void") and data.keys() <= _BARE_ACT:
        msg_id = data.get("id")
        if type(msg_id) is str and is_message_id(msg_id):
            return MessageOp(op, msg_id)
    return None


# The cyclic collector's thresholds while a file is charged. Each line allocates a score of
# objects, none of them in a cycle (refcounting frees them); at the default (700, 10, 10)
# the collector runs every few dozen lines and now and then walks every account, power row
# and quote the charger keeps. Measured on 200 000 lines: about 8 % of the run.
FILE_GC_THRESHOLDS = (50_000, 50, 100)


def charge_lines(charger: Charger, stream: BufferedIOBase, summary: BatchSummary | None = None, *,
                 progress: Callable[[int], None] | None = None) -> Iterator[str]:
    """Charge every JSON line of ``stream``; yield each batch's result lines (text ending in
    a newline) once the batch is committed. ``summary`` counts the results; ``progress``
    hears the bytes read. The caller holds ``charger`` open (``with charger:``): on a
    failure, a batch still in flight is rolled back when it closes."""
    from orjson import loads

    counted = summary if summary is not None else BatchSummary()
    lineno = 0

    def parse(raw: bytes, number: int) -> Any:
        """``parse_line``, with a well-formed line decoded by orjson and checked in one
        expression first (``quick_request``). Whatever orjson refuses or decodes otherwise
        than ``json`` would (lone surrogates, NaN, a BOM, huge numbers, deep nesting: never a
        well-formed line) is left to ``parse_line``, so every line gets the answer and the
        message ``json`` gives."""
        try:
            data = loads(raw)
        except ValueError:
            return parse_line(raw, number)
        if type(data) is not dict or b"\\u0000" in raw:
            return parse_line(raw, number)
        return quick_request(data, data.get("op", "charge")) or parse_line(raw, number)

    thresholds = gc.get_threshold()
    gc.set_threshold(*FILE_GC_THRESHOLDS)
    # The batch whose commit is running, and its result lines: yielded once it is durable,
    # at the latest before the next read can block.
    in_flight: tuple[Pending | None, str] | None = None
    try:
        for lines in read_batches(stream):
            if lines is None:  # a read comes, which may block: what is ready goes first
                if in_flight is not None:
                    yield _durable(in_flight)
                    in_flight = None
                continue
            if progress is not None:
                progress(sum(len(raw) + 1 for raw in lines))
            parsed = []
            for raw in lines:  # every line gets its result, a blank one too
                lineno += 1
                parsed.append((lineno, parse(raw, lineno)))
            reqs = [p for _, p in parsed if type(p) is ChargeRequest or type(p) is MessageOp]
            if in_flight is not None:  # the batch before commits while this one is read
                yield _durable(in_flight)
                in_flight = None
            pending = charger.begin(reqs) if reqs else None
            charged = iter(pending.results if pending is not None else ())
            results = [next(charged) if type(p) is ChargeRequest or type(p) is MessageOp else p
                       for _, p in parsed]
            counted.add_all(results)
            in_flight = (pending, "".join([charge_line(r, n) + "\n"
                                           for r, (n, _) in zip(results, parsed, strict=True)]))
        if in_flight is not None:
            yield _durable(in_flight)
    finally:
        gc.set_threshold(*thresholds)  # in-process callers (tests, scripts) get theirs back


def _durable(in_flight: tuple[Pending | None, str]) -> str:
    pending, text = in_flight
    if pending is not None:
        pending.wait()
    return text
