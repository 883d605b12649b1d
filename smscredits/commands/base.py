"""What every command shares: global options, the open database, the output, errors.

Kept light (Typer only): the core and SQLAlchemy are imported inside commands, so that
``--help`` and ``--version`` start fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

from smscredits.errors import BadInput, DatabaseError, SmsCreditsError

if TYPE_CHECKING:
    from smscredits.render import Output
    from smscredits.storage.engine import Db

_MODES = ("json", "jsonl", "csv")
PANELS = ("Users and powers", "Credits", "Limits", "Refills", "Prices and charging", "Logs",
          "Setup")
# Global options the root reads; `hoist` lets them follow the command too.
GLOBAL_FLAGS = {"--json", "--jsonl", "--csv", "--quiet", "-q"}
GLOBAL_VALUED = {"--db", "--actor"}


@dataclass
class State:
    db_flag: str | None = None
    mode: str = "table"
    quiet: bool = False
    actor: str | None = None
    handle: Db | None = None


STATE = State()


def set_globals(
    *, db: str | None, actor: str | None, modes: dict[str, bool], quiet: bool
) -> None:
    """Fresh state for one invocation, from the root's options."""
    chosen = [m for m in _MODES if modes.get(m)]
    if len(chosen) > 1:
        raise BadInput(f"choose one output format, not {' and '.join('--' + m for m in chosen)}")
    STATE.db_flag, STATE.actor, STATE.quiet, STATE.handle = db, actor, quiet, None
    STATE.mode = chosen[0] if chosen else "table"


def _valued_options(cmd: Any, found: set[str] | None = None) -> set[str]:
    """Every option name in the command tree that takes a value (so its value is skipped)."""
    found = set() if found is None else found
    for param in getattr(cmd, "params", []):
        if getattr(param, "param_type_name", "") == "option" and not (
            getattr(param, "is_flag", False) or getattr(param, "count", False)
        ):
            found.update(param.opts)
    for sub in getattr(cmd, "commands", {}).values():
        _valued_options(sub, found)
    return found


def hoist(root: Any, args: list[str]) -> list[str]:
    """Move global options written after the command to the front, where the root reads them."""
    valued = _valued_options(root) - GLOBAL_VALUED
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            rest.extend(args[i:])
            break
        if token in GLOBAL_FLAGS or (token.split("=", 1)[0] in GLOBAL_VALUED and "=" in token):
            front.append(token)
        elif token in GLOBAL_VALUED or token in valued:
            (front if token in GLOBAL_VALUED else rest).extend(args[i : i + 2])
            i += 1
        else:
            rest.append(token)
        i += 1
    return front + rest


class Group(TyperGroup):
    pass


# Typer vendors click; its ClickException is the base of every parsing error.
_ClickException: type[Exception] = typer.BadParameter.__mro__[2]


def _usage_error(e: Any) -> None:
    """A parsing error as one line (Typer would draw a multi-line box)."""
    if type(e).__name__ == "NoArgsIsHelpError":
        raise e
    ctx = getattr(e, "ctx", None)
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    fail(BadInput(e.format_message() + hint, code="usage"))


# How values are shown in --help (Typer would write <str>, <int>).
METAVARS = {
    "--to": "NUMBER", "--text": "TEXT", "--parts": "N", "--id": "MESSAGE_ID", "--file": "FILE",
    "--note": "TEXT", "--tz": "ZONE", "--since": "WHEN", "--until": "WHEN", "--kind": "KIND",
    "--limit": "N", "--before": "ID", "--every": "day|week|month", "--on": "DAY",
    "--at": "HH:MM", "--when-below": "N", "--add": "N", "--top-up-to": "N", "--initial": "N",
    "--overdraft": "N|unlimited", "--daily": "N|none", "--weekly": "N|none",
    "--monthly": "N|none", "--by": "day|week|month|country", "--user": "USER", "--keep": "PATH",
}


def _set_metavars(cmd: Any) -> None:
    for param in getattr(cmd, "params", []):
        if param.param_type_name == "argument":
            param.metavar = param.metavar or (param.name or "").upper()
        elif not getattr(param, "is_flag", False):
            param.metavar = param.metavar or METAVARS.get(param.opts[0], "VALUE")
    for sub in getattr(cmd, "commands", {}).values():
        _set_metavars(sub)


class RootGroup(TyperGroup):
    """Reads global options anywhere; turns every error a user can cause into one line on
    stderr and its exit code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _set_metavars(self)

    def make_context(self, info_name: Any, args: list[str], parent: Any = None,
                     **extra: Any) -> Any:
        # Known before parsing, so that a parsing error is reported as JSON too.
        STATE.mode = "json" if "--json" in args or "--jsonl" in args else "table"
        try:
            return super().make_context(info_name, args, parent, **extra)
        except _ClickException as e:
            _usage_error(e)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist(self, args))

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Commands in sections, in the order of the tutorial."""
        sections: dict[str, list[tuple[str, str]]] = {}
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            panel = getattr(cmd, "rich_help_panel", None) or "Other commands"
            sections.setdefault(panel, []).append((name, cmd.get_short_help_str(limit=70)))
        order = {panel: i for i, panel in enumerate(PANELS)}
        for panel in sorted(sections, key=lambda p: order.get(p, len(order))):
            with formatter.section(panel):
                formatter.write_dl(sections[panel])

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except SmsCreditsError as e:
            fail(e)
        except _ClickException as e:
            _usage_error(e)
        except Exception as e:
            if type(e).__module__.startswith(("sqlalchemy", "psycopg", "sqlite3")):
                fail(_database_error(e))
            raise
        finally:
            if STATE.handle is not None:
                STATE.handle.dispose()
                STATE.handle = None


def _database_error(e: Exception) -> DatabaseError:
    from sqlalchemy import exc

    from smscredits.storage.engine import explain

    if STATE.handle is not None and isinstance(e, exc.DBAPIError):
        return explain(e, STATE.handle.url)
    return DatabaseError(f"database error: {type(e).__name__}")


def fail(e: SmsCreditsError) -> None:
    output().error(e.code, e.message)
    raise typer.Exit(int(e.exit_code))


def output() -> Output:
    from smscredits.render import Output

    return Output(mode=STATE.mode, quiet=STATE.quiet)


def db() -> Db:
    """The database for this invocation, opened (and checked) on first use."""
    if STATE.handle is None:
        from smscredits.storage.engine import open_db

        STATE.handle = open_db(STATE.db_flag, actor=STATE.actor)
    return STATE.handle


def app(name: str, help_: str, example: str) -> typer.Typer:
    return typer.Typer(
        name=name, help=help_, cls=Group, no_args_is_help=True, epilog=f"Example: {example}",
        pretty_exceptions_enable=False, rich_markup_mode=None,
    )


def command(
    target: typer.Typer, name: str | None = None, *, example: str, **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command with an example at the end of its help."""
    return target.command(name, epilog=f"Example: {example}", **kwargs)


def amount(text: str, *, what: str = "amount", signed: bool = False) -> int:
    from smscredits.amounts import parse_amount

    return parse_amount(text, what=what, signed=signed)
