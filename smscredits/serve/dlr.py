"""Delivery reports in the gateways' own request shapes, as ``dlr`` acts (``holds``).

- **Kannel** calls the ``dlr-url`` given at ``sendsms`` (``GET``), with its escape codes filled
  in: ``/v1/dlr/kannel?id=MSG-ID&status=%d``. ``%d`` is Kannel's DLR type (1 delivered,
  2 not delivered, 4 queued, 8 accepted by the SMSC, 16 rejected by the SMSC).
- **Jasmin** calls a message's ``dlr-url`` (``GET`` or ``POST``, form fields) with ``id`` (its
  message id), ``message_status`` (``ESME_ROK``/``ESME_R*`` at level 1, the receipt's
  ``DELIVRD``, ``UNDELIV``... at level 2) and ``level``, ``connector``, ``id_smsc``, ``sub``,
  ``dlvrd``, ``subdate``, ``donedate``, ``err``, ``text``, which are not needed here.

Jasmin makes its message id only after its interceptor has run, so a hold made there cannot
be under it: the sender gives a reference of its own (``contrib/jasmin``), the interceptor holds
under it, and the ``dlr-url`` carries it (``/v1/dlr/jasmin?ref=REF``; Jasmin keeps the URL's
query and adds its fields). A report with ``ref`` settles the message recorded under ``ref``;
without, the one under Jasmin's ``id``.

Each report becomes ``MessageOp("dlr", id, status=..., source=...)``; what a status does is
``holds.dlr_action``'s (``config set dlr.kannel.2 ignore`` changes it). A report that comes
twice is a replay of its first outcome.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from smscredits.charging.model import MessageOp
from smscredits.errors import BadInput
from smscredits.validate import is_message_id

_FORM = "application/x-www-form-urlencoded"


def fields(query: dict[str, str], content_type: str | None, body: bytes) -> dict[str, str]:
    """The report's fields: its query, and a form body's fields over them."""
    found = dict(query)
    if body:
        kind = (content_type or _FORM).split(";")[0].strip().lower()
        if kind != _FORM:
            raise BadInput(f"a report's body is a form ({_FORM}), not {kind[:60]}")
        try:
            found.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise BadInput("a report's form is not UTF-8 text") from None
    return found


def _op(found: dict[str, str], status_field: str, source: str, id_field: str = "id"
        ) -> MessageOp:
    msg_id, status = found.get(id_field), found.get(status_field)
    if msg_id is None or not is_message_id(msg_id):
        raise BadInput(f"a report needs an {id_field}: 1-128 printable ASCII characters, "
                       "no spaces")
    if not status or len(status) > 32 or not status.isascii() or not status.isprintable():
        raise BadInput(f"a report needs a {status_field}: the gateway's delivery status")
    return MessageOp("dlr", msg_id, status=status, source=source)


def kannel(found: dict[str, str]) -> MessageOp:
    return _op(found, "status", "kannel")


def jasmin(found: dict[str, str]) -> MessageOp:
    return _op(found, "message_status", "jasmin", "ref" if "ref" in found else "id")
