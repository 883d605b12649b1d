"""`price`, `limits`, `charge`, `refund` and `usage`."""

from __future__ import annotations

import os
import sys
from io import BufferedIOBase
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from smscredits.commands.base import app, command, db, output
from smscredits.commands.users import OptionalUser, UserArg
from smscredits.errors import BadInput

price_app = app("price", "Set prices per message part by destination; quote a message.",
                "smscredits price set HU 0.8")
limits_app = app("limits", "Daily, weekly and monthly spending limits.",
                 "smscredits limits set alice --daily 100")

To = Annotated[str, typer.Option("--to", help="Destination number, E.164 (+36301234567).")]
TextOpt = Annotated[str | None, typer.Option("--text", help="The message text (parts are "
                                                            "counted from it).")]
PartsOpt = Annotated[int | None, typer.Option("--parts", help="Number of parts, if known "
                                                              "instead of the text.")]
CHARGE_COLUMNS = [("window", "Window"), ("limit", "Limit"), ("spent", "Spent"),
                  ("remaining", "Remaining"), ("resets_at", "Resets at")]


def _parts(text: str | None, parts: int | None) -> Any:
    from smscredits.parts import count_parts
    from smscredits.pricing import given_parts

    if (text is None) == (parts is None):
        raise BadInput("give exactly one of --text and --parts")
    return count_parts(text) if text is not None else given_parts(parts or 0)


# -- prices ------------------------------------------------------------------------------


# A negative price (`-0.1`) reaches the command, which refuses it by name, instead of
# being read as an unknown option.
@command(price_app, "set", example="smscredits price set +3630 0.8",
         context_settings={"ignore_unknown_options": True})
def price_set(
    destination: Annotated[str, typer.Argument(help="default, a country code (HU) or a "
                                                    "prefix (+3630).")],
    price: Annotated[str, typer.Argument(help="Credits per message part.")],
) -> None:
    """Set the price per part for a destination."""
    from smscredits import pricing

    row = pricing.set_price(db(create=True), destination, price)
    output().message(f"price {row.key} ({row.kind}): {row.price} per part", row)


@command(price_app, "delete", example="smscredits price delete +3630")
def price_delete(destination: Annotated[str, typer.Argument(help="default, CC or +PREFIX.")])\
        -> None:
    """Remove a price."""
    from smscredits import pricing

    key = pricing.delete_price(db(), destination)
    output().message(f"price {key}: removed", {"key": key, "deleted": True})


@command(price_app, "list", example="smscredits price list --csv")
def price_list() -> None:
    """List prices: default, countries, prefixes."""
    from smscredits import pricing

    output().rows(pricing.list_prices(db()), [("key", "Destination"), ("kind", "Kind"),
                                              ("price", "Price"), ("updated_at", "Updated (UTC)")],
                  empty="no prices set: every charge is refused with no_price",
                  optional={"kind": 2, "updated_at": 1})


@command(price_app, "import", example="smscredits price list --csv | smscredits price import -")
def price_import(
    file: Annotated[Path, typer.Argument(help="CSV of destination,price rows (as price list "
                                              "--csv writes them); - reads stdin.")],
) -> None:
    """Import prices from CSV; any bad row is reported and nothing is imported. Prices the
    file repeats unchanged are left as they are."""
    from smscredits import pricing
    from smscredits.render import Progress

    text = _price_file(file)
    progress = Progress("importing prices", None)
    try:
        report = pricing.import_text(db(create=True), text, progress=progress.advance)
    finally:
        progress.close()
    out = output()
    if report.errors:
        if out.machine:
            out.one({"imported": 0, "unchanged": 0, "errors": report.errors})
        else:
            for e in report.errors:
                out.err.write(f"{file}:{e['line']}: {e['error']}\n")
        out.error("bad_input", f"{len(report.errors)} bad row(s) in {str(file)!r}: "
                               "nothing imported")
        raise typer.Exit(2)
    source = "stdin" if str(file) == "-" else file
    out.message(f"imported {report.imported} price(s) from {source}, "
                f"{report.unchanged} unchanged",
                {"imported": report.imported, "unchanged": report.unchanged, "errors": []})


def _price_file(file: Path) -> str:
    """The text of a price file, or of stdin for ``-``."""
    try:
        if str(file) == "-":
            return sys.stdin.buffer.read().decode("utf-8-sig")
        return file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read price file {str(file)!r}: {e}") from None


@command(price_app, "quote", example="smscredits price quote --to +36301234567 --text 'Hello'")
def price_quote(
    to: To,
    text: TextOpt = None,
    parts: PartsOpt = None,
    user: Annotated[str | None, typer.Option(help="Also show this user's limits left.")] = None,
) -> None:
    """What a message would cost: encoding, parts, matching price rule, cost."""
    from smscredits import reads

    data = reads.quote(db(), to, _parts(text, parts), counted=text is not None, user=user)
    out = output()
    if out.machine:
        out.one(data)
        return
    shown = {**data, **{k: "-" for k in ("encoding", "units") if data[k] is None},
             "rule": _rule_text(data["matched"]),
             "near_misses": "; ".join(f"{m['rule']} ({m['reason']})"
                                      for m in data["near_misses"])}
    out.record(shown, [("to", "To"), ("country", "Country"), ("encoding", "Encoding"),
                       ("units", "Units"), ("parts", "Parts"), ("rule", "Price rule"),
                       ("price", "Price per part"), ("cost", "Cost")]
               + ([("near_misses", "Near misses")] if data["near_misses"] else []))
    if user is not None:
        out.out.write("\n")
        _show_limits(reads.show_limits(db(), user), "Limits left for")


def _rule_text(matched: dict[str, Any]) -> str:
    """``+3630 (prefix)``, ``HU (country)``, ``default (no price for GG)``."""
    if matched["kind"] == "default" and matched["country"]:
        return f"default (no price for {matched['country']})"
    return f"{matched['rule']} ({matched['kind']})"


# -- limits ------------------------------------------------------------------------------

LimitOpt = Annotated[str | None, typer.Option(help="Credits, or none to remove the limit.")]


@command(limits_app, "set", example="smscredits limits set alice --daily 100 --monthly none")
def limits_set(user: UserArg, daily: LimitOpt = None, weekly: LimitOpt = None,
               monthly: LimitOpt = None) -> None:
    """Set or remove spending limits (calendar day, ISO week, month in the user's zone)."""
    from smscredits import ledger, limits
    from smscredits.amounts import parse_optional

    given = {"day": daily, "week": weekly, "month": monthly}
    changes = {w: parse_optional(v, what=f"{w} limit") for w, v in given.items() if v is not None}
    lim = ledger.set_limits(db(), user, changes)
    warnings = limits.unreachable(lim)
    out = output()
    if not out.silent:
        for w in warnings:
            out.err.write(f"{w['message']}\n")
    _show_limits(lim, warning=warnings[0] if warnings else None)


@command(limits_app, "show", example="smscredits limits show alice")
def limits_show(user: OptionalUser = None) -> None:
    """Each limit with what is spent, what is left and when it resets (without USER: every
    user's windows, least left first)."""
    from smscredits import reads

    if user is None:
        _show_every_window()
        return
    _show_limits(reads.show_limits(db(), user))


def _show_every_window() -> None:
    from smscredits.reads import every_window
    from smscredits.render import in_zone

    out = output()
    found = every_window(db())
    shown = found if out.machine else [in_zone(w, w.tz) for w in found]
    out.rows(shown, [("user", "User"), *CHARGE_COLUMNS], title="Limits left",
             empty="no powers yet", optional={"resets_at": 1})


def _show_limits(lim: Any, title: str = "Limits of", warning: Any = None) -> None:
    from smscredits.render import in_zone, plain

    out = output()
    if out.mode == "csv":  # a row per window, as the table has it
        out.rows([{"user": lim.user, "user_id": lim.user_id, "tz": lim.tz,
                  **plain(w)} for w in lim.windows], [])
    elif out.machine:
        out.one(lim if warning is None else {**plain(lim), "warning": warning})
    else:
        out.rows([in_zone(w, lim.tz) for w in lim.windows], CHARGE_COLUMNS,
                 title=f"{title} {lim.user} ({lim.tz})", optional={"resets_at": 1})


# -- charge, refund, usage ---------------------------------------------------------------


def register(root: typer.Typer) -> None:
    panel = "Prices and charging"

    @command(root, "charge", rich_help_panel=panel,
             example="smscredits charge alice --to +36301234567 --text 'Hello' --id msg-1")
    def charge(
        user: Annotated[str | None, typer.Argument(help="User to charge.")] = None,
        to: Annotated[str | None, typer.Option("--to", help="Destination number.")] = None,
        text: TextOpt = None,
        parts: PartsOpt = None,
        msg_id: Annotated[str | None, typer.Option("--id", help="Message id: a retry with "
                                                   "the same id is not charged again.")] = None,
        file: Annotated[str | None, typer.Option("--file", help="JSON lines to charge "
                                                 "(- for stdin); one result line each.")] = None,
        hold: Annotated[bool, typer.Option("--hold", help="Hold the cost until the message "
                                           "is settled or voided (see `settle`, `dlr`).")
                        ] = False,
        ttl: Annotated[str | None, typer.Option(help="How long the hold waits for its "
                                                "report: 90s, 30m, 48h (default: hold_ttl).")
                       ] = None,
    ) -> None:
        """Charge one message (or a stream of them with --file); --hold to hold it."""
        if file is not None:
            if user is not None or to is not None or text is not None or parts is not None \
                    or hold or ttl is not None:
                raise BadInput("--file takes no USER, --to, --text, --parts, --hold or --ttl "
                               "(a line says \"op\": \"hold\")")
            raise typer.Exit(_charge_file(file))
        if user is None or to is None:
            raise BadInput("give USER and --to (or --file)")
        if ttl is not None and not hold:
            raise BadInput("--ttl is for a hold: add --hold")
        _charge_one(user, to, text, parts, msg_id, hold=hold, ttl=ttl)

    @command(root, "refund", rich_help_panel=panel,
             example="smscredits refund msg-1 --note 'not delivered'")
    def refund(
        msg_id: Annotated[str, typer.Argument(metavar="MESSAGE_ID", help="The message id.")],
        note: Annotated[str | None, typer.Option(help="Why: kept in the journal.")] = None,
    ) -> None:
        """Give back a charged message's credits (once) and its limit-window room."""
        from smscredits import charging, validate

        r = charging.refund(db(), msg_id, note=validate.note(note))
        output().message(
            f"{r.user}: refunded {r.amount} for message {r.id}, balance {r.balance}", r)

    @command(root, "usage", rich_help_panel="Logs",
             example="smscredits usage --by user --since 7d")
    def usage(
        user: OptionalUser = None,
        by: Annotated[str, typer.Option(help="day, week, month, country, or user (the "
                                             "whole gateway only).")] = "day",
        since: Annotated[str | None, typer.Option(
            help="From this time: 2026-11-25, 2026-11-25T10:00Z, or an age like 7d.")] = None,
        until: Annotated[str | None, typer.Option(help="Before this time (same forms).")
                         ] = None,
        limit: Annotated[int, typer.Option(help="Most recent periods shown.", min=1)] = 31,
    ) -> None:
        """Spend and message counts per day, week, month, country or user: of one user (in
        the user's zone) or of the whole gateway (in the default zone)."""
        from smscredits import clock, validate
        from smscredits import usage as usage_mod

        lo, hi = validate.time_range(since, until, now=clock.now())
        handle = db()
        rows = usage_mod.usage(handle, user, by, limit, since=lo, until=hi)
        out = output()
        title = f"Spend of {user or 'the gateway'} by {by}"
        if by in usage_mod.PERIODS:
            tz = handle.default_tz if user is None else _user_zone(handle, user)
            title += f" ({tz})"
        if not out.machine and rows:
            from smscredits.render import usage_chart

            if usage_chart(out.console(), rows, by.capitalize(), title):
                return
        holds = any(r.held or r.settled or r.voided for r in rows)
        out.rows(rows, [("period", by.capitalize()), ("messages", "Messages"),
                        ("parts", "Parts"), ("spent", "Spent"), ("refunded", "Refunded"),
                        *(HOLD_USAGE if holds else [])],
                 title=title, empty="no messages yet",
                 optional={"parts": 1, "refunded": 2, "held": 3, "settled": 3, "voided": 3,
                           "expired": 3})


# Usage columns of holds, in a table only where holds were used.
HOLD_USAGE = [("held", "Held"), ("settled", "Settled"), ("voided", "Voided"),
              ("expired", "Expired")]


def _user_zone(handle: Any, user: str) -> str:
    from smscredits import ledger

    return ledger.get_user(handle, user).tz


def _charge_one(user: str, to: str, text: str | None, parts: int | None,
                msg_id: str | None, *, hold: bool = False, ttl: str | None = None) -> None:
    from smscredits import holds, validate
    from smscredits.charging import Charger, ChargeRequest

    if (text is None) == (parts is None):
        raise BadInput("give exactly one of --text and --parts")
    req = ChargeRequest(user, to, text, parts, validate.message_id(msg_id) if msg_id else None,
                        hold=hold, ttl=holds.parse_ttl(ttl) if ttl is not None else None)
    with Charger(db()) as charger:
        result = charger.charge(req)
    out = output()
    done = result.status in ("charged", "held")
    if out.machine:
        out.one(result)
    elif done:
        out.message(_charged_text(user, result, given_id=msg_id is not None))
    if not done:
        if not out.machine:
            out.error(result.reason or "error", f"{user}: charge refused, {result.message} "
                                                f"({result.reason})")
        raise typer.Exit(result.exit_code)


def _charged_text(user: str, r: Any, *, given_id: bool) -> str:
    """``alice: charged 0.6 for 1 part to +36301234567 (+3630 at 0.6), balance 94.4``, with
    the message id when it was made up here: a refund needs it."""
    what = f"{r.parts} part{'s' * (r.parts != 1)}"
    ident = "" if given_id else f", message id {r.id}"
    if not r.metered:
        return f"{user}: not metered (no credits power), {what} to {r.to}{ident}"
    if r.replayed:
        return (f"{user}: {r.id} already charged {r.cost} (balance then {r.balance}), "
                "nothing charged now")
    if r.status == "held":
        from smscredits.render import local_time

        return (f"{user}: held {r.cost} for {what} to {r.to} until "
                f"{local_time(r.expires_at, 'UTC')}{ident}")
    return (f"{user}: charged {r.cost} for {what} to {r.to} ({r.rule} at {r.price}), "
            f"balance {r.balance}{ident}")


def _charge_file(name: str) -> int:
    from smscredits.charging import BatchSummary, Charger
    from smscredits.charging.stream import charge_lines
    from smscredits.render import Progress

    try:
        # typeshed types stdin.buffer as BinaryIO; it is a BufferedReader, which has read1.
        stream = (cast(BufferedIOBase, sys.stdin.buffer) if name == "-"
                  else open(name, "rb"))  # noqa: SIM115
    except OSError as e:
        raise BadInput(f"cannot read {name!r}: {e.strerror}") from None
    summary, out = BatchSummary(), sys.stdout
    progress = Progress("charging", None if name == "-" else os.path.getsize(name))
    with Charger(db()) as charger:  # on a failure, a batch still in flight is rolled back
        for text in charge_lines(charger, stream, summary, progress=progress.advance):
            out.write(text)
            out.flush()
    progress.close()
    if name != "-":
        stream.close()
    _report(summary)
    return 2 if summary.malformed else 0


# Counted apart in a stream's summary, shown only when a line did one.
ACTED = ("held", "settled", "voided", "refunded", "ignored")


def _report(s: Any) -> None:
    """The run's summary on stderr (stdout carries one result per line): a sentence, or with
    --json/--jsonl one JSON object."""
    from smscredits.amounts import format_amount, to_decimal
    from smscredits.render import to_json

    out = output()
    if out.quiet:
        return
    if out.machine:
        acted = {k: getattr(s, k) for k in ACTED if getattr(s, k)}
        out.err.write(to_json({"summary": {
            "lines": s.lines, "charged": s.charged, **acted, "replayed": s.replayed,
            "rejected": s.rejected, "errors": s.errors, "cost": to_decimal(s.cost),
            "rejected_by_reason": s.rejected_by_reason, "errors_by_reason": s.errors_by_reason,
        }}) + "\n")
        return

    def by_reason(counts: dict[str, int]) -> str:
        return f" ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})" if counts else ""

    done = "".join(f", {k} {getattr(s, k)}" for k in ACTED if getattr(s, k))
    out.err.write(f"{s.lines} line(s): charged {s.charged}{done}, replayed {s.replayed}, refused "
                  f"{s.rejected}{by_reason(s.rejected_by_reason)}, errors {s.errors}"
                  f"{by_reason(s.errors_by_reason)}; {format_amount(s.cost)} credits charged\n")
