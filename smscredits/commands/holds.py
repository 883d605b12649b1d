"""`settle`, `void`, `dlr` and `holds list|expire`: the second half of a hold's life
(``charge --hold`` is the first; the rules are in ``smscredits.holds``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from smscredits.commands.base import app, command, db, output
from smscredits.commands.users import OptionalUser

holds_app = app("holds", "List open holds; settle or void those past their expiry.",
                "smscredits holds list --older-than 1h")

MessageId = Annotated[str, typer.Argument(metavar="MESSAGE_ID", help="The message id.")]
HOLD_COLUMNS = [("id", "Message"), ("user", "User"), ("to", "To"), ("held", "Held"),
                ("parts", "Parts"), ("at", "Held at"), ("expires_at", "Expires at")]


def show_act(result: Any) -> None:
    """An act's result: its JSON, or a sentence; a refusal or error exits with its code."""
    out = output()
    if result.status == "error":
        if out.machine:
            out.one(result)
        else:
            out.error(result.reason or "error", f"{result.id}: {result.message} "
                                                f"({result.reason})")
        raise typer.Exit(result.exit_code)
    if out.machine:
        out.one(result)
        return
    out.message(act_text(result))


def act_text(r: Any) -> str:
    """``m-1: settled 1.2 (held 0.6, 2 parts), balance 98.8`` and the like."""
    user = f"{r.user}: " if r.user else ""
    if r.replayed or r.status == "ignored":
        return f"{user}{r.id} {r.message}"
    if not r.metered:
        return f"{user}{r.id} {r.status} (not metered)"
    if r.status == "settled":
        note = f" ({r.message})" if r.reason else ""
        return (f"{user}{r.id} settled at {r.cost} (held {r.held}, {r.parts} part"
                f"{'s' * (r.parts != 1)}), balance {r.balance}{note}")
    if r.status == "voided":
        expired = " (expired)" if r.reason == "expired" else ""
        return f"{user}{r.id} voided, {r.held} released{expired}, balance {r.balance}"
    if r.status == "refunded":
        return f"{user}{r.id} refunded {r.cost}, balance {r.balance}"
    return f"{user}{r.id} {r.status}"


def register(root: typer.Typer) -> None:
    panel = "Prices and charging"

    @command(root, "settle", rich_help_panel=panel, example="smscredits settle msg-1 --parts 2")
    def settle(
        msg_id: MessageId,
        parts: Annotated[int | None, typer.Option(
            "--parts", help="Parts the SMSC actually sent, if not those held.", min=1,
            max=255)] = None,
    ) -> None:
        """Make a hold final (at the parts sent, priced as held)."""
        from smscredits import validate
        from smscredits.charging import Charger

        with Charger(db()) as charger:
            show_act(charger.settle(validate.message_id(msg_id), parts=parts))

    @command(root, "void", rich_help_panel=panel, example="smscredits void msg-1 --note "
                                                          "'not sent'")
    def void(
        msg_id: MessageId,
        note: Annotated[str | None, typer.Option(help="Why: kept in the journal.")] = None,
    ) -> None:
        """Release a hold (a settled message's void is a refund, see void_settled)."""
        from smscredits import validate
        from smscredits.charging import Charger

        with Charger(db()) as charger:
            show_act(charger.void(validate.message_id(msg_id), note=validate.note(note)))

    @command(root, "dlr", rich_help_panel=panel,
             example="smscredits dlr msg-1 DELIVRD --from jasmin")
    def dlr(
        msg_id: MessageId,
        status: Annotated[str, typer.Argument(help="The delivery status as the gateway "
                                                   "reports it (Kannel: 1, 2, 4, 8, 16).")],
        source: Annotated[str, typer.Option("--from", help="kannel, jasmin or smpp.")
                          ] = "smpp",
    ) -> None:
        """A delivery report: settles, voids or leaves the hold, by the status mapping."""
        from smscredits import holds, validate
        from smscredits.charging import Charger

        holds.check_action(source, holds.SOURCES, "--from")
        with Charger(db()) as charger:
            show_act(charger.dlr(validate.message_id(msg_id), status, source))


@command(holds_app, "list", example="smscredits holds list alice --older-than 1h")
def holds_list(
    user: OptionalUser = None,
    older_than: Annotated[str | None, typer.Option(
        help="Only holds older than this: 90s, 30m, 48h, 7d.")] = None,
) -> None:
    """Open holds, oldest first."""
    from smscredits import clock, holds, reads
    from smscredits.render import in_zone

    before = clock.now_us() - holds.parse_age(older_than) if older_than else None
    handle = db()
    found = reads.open_holds(handle, user, before=before)
    out = output()
    shown = found if out.machine else [in_zone(h, handle.default_tz) for h in found]
    out.rows(shown, HOLD_COLUMNS, title="Open holds", empty="no open holds",
             optional={"to": 2, "parts": 1, "at": 3})


@command(holds_app, "expire", example="smscredits holds expire")
def holds_expire(
    older_than: Annotated[str | None, typer.Option(
        help="Also end holds made longer ago than this (0s: every open hold), whatever "
             "their expiry.")] = None,
) -> None:
    """Settle or void (hold_expiry) every hold past its expiry; for cron."""
    from smscredits import clock, holds
    from smscredits.charging import Charger

    before = None if older_than is None else clock.now_us() - holds.parse_age(older_than)
    with Charger(db()) as charger:
        ended = charger.expire(before=before)
    out = output()
    settled = sum(r.status == "settled" for r in ended)
    if out.machine:
        out.rows(ended, [])
    else:
        out.message(f"holds expired: {len(ended)} ({settled} settled, "
                    f"{len(ended) - settled} voided)")
