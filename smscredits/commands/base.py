"""What every command shares: global options, the open database, the output, errors.

Kept light (Typer only): the core and SQLAlchemy are imported inside commands, so that
``--help`` and ``--version`` start fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from smscredits.config import is_text
from smscredits.errors import BadInput, DatabaseError, SmsCreditsError

if TYPE_CHECKING:
    from smscredits.render import Output
    from smscredits.storage.engine import Db
    from smscredits.storage.lite import LiteDb

_MODES = ("json", "jsonl", "csv")
PANELS = ("Users and powers", "Credits", "Limits", "Refills", "Prices and charging", "Logs",
          "Setup")
# Global options the root reads; `hoist` lets them follow the command too.
GLOBAL_FLAGS = {"--json", "--jsonl", "--csv", "--quiet", "-q"}
GLOBAL_VALUED = {"--db", "--actor"}


@dataclass
class State:
    """One invocation's state: the root's options and the databases it opened. It lives on
    the root Click context (``ctx.obj``), which closes the databases when it ends
    (``ctx.call_on_close``), as sqlite-utils registers its databases for cleanup; a command
    run inside another (the demo's steps) has a context, and a state, of its own."""

    db_flag: str | None = None
    mode: str = "table"
    quiet: bool = False
    actor: str | None = None
    handle: Db | None = None
    lite: LiteDb | None = None  # the read-only sqlite3 handle, when `lite_tried` found one
    lite_tried: bool = False

    def close(self) -> None:
        if self.handle is not None:
            self.handle.dispose()
            self.handle = None
        if self.lite is not None:
            self.lite.close()
        self.lite, self.lite_tried = None, False


# Before the root context exists (an error while parsing), only the output mode is known.
_PARSING = State()


def state() -> State:
    """The running invocation's state (``_PARSING`` before its root context exists)."""
    # Typer 0.29 vendors Click (pinned in pyproject.toml); its context stack is Click's own.
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return _PARSING
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State(mode=_PARSING.mode)
        root.call_on_close(root.obj.close)
    return root.obj


def set_globals(
    *, db: str | None, actor: str | None, modes: dict[str, bool], quiet: bool
) -> None:
    """The invocation's state, from the root's options."""
    chosen = [m for m in _MODES if modes.get(m)]
    if len(chosen) > 1:
        raise BadInput(f"choose one output format, not {' and '.join('--' + m for m in chosen)}")
    run = state()
    run.db_flag, run.actor, run.quiet = db, actor, quiet
    run.mode = chosen[0] if chosen else "table"


def _takes_value(cmd: Any, token: str) -> bool:
    for param in getattr(cmd, "params", []):
        if token in getattr(param, "opts", ()) and param.param_type_name == "option":
            return not (getattr(param, "is_flag", False) or getattr(param, "count", False))
    return False


def hoist(root: Any, ctx: Any, args: list[str]) -> list[str]:
    """Move global options written after the command to the front, where the root reads them.

    Walks down the command path as it goes, so that an option's value (`--note --json`) is
    never mistaken for a global option.
    """
    front: list[str] = []
    rest: list[str] = []
    current = root
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            rest.extend(args[i:])
            break
        if token in GLOBAL_FLAGS or (token.split("=", 1)[0] in GLOBAL_VALUED and "=" in token):
            front.append(token)
        elif token in GLOBAL_VALUED:
            front.extend(args[i : i + 2])
            i += 1
        elif token.startswith("-"):
            if "=" not in token and _takes_value(current, token):
                rest.extend(args[i : i + 2])
                i += 1
            else:
                rest.append(token)
        else:
            rest.append(token)
            if hasattr(current, "get_command"):
                current = current.get_command(ctx, token) or current
        i += 1
    return front + rest


# Typer vendors click; its ClickException is the base of every parsing error.
_ClickException: type[Exception] = typer.BadParameter.__mro__[2]
_UsageError: Any = typer.BadParameter.__mro__[1]


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


# name: (module in smscredits.commands, its Typer app or register function, help section,
# one-line help). The order is the order of `smscredits --help`.
LAZY: dict[str, tuple[str, str, str, str]] = {
    "user": ("users", "users_app", "Users and powers",
             "Add, list, show, disable and enable users (gateway accounts)."),
    "power": ("users", "power_app", "Users and powers",
              "Give users a credits power (put them under credit control)."),
    "credits": ("credits", "credits_app", "Credits",
                "Add, subtract and set prepaid credits; show balances."),
    "limits": ("charging", "limits_app", "Limits", "Daily, weekly and monthly spending limits."),
    "refill": ("refills", "refill_app", "Refills",
               "Automatic refill plans, applied exactly once by `refill run`."),
    "price": ("charging", "price_app", "Prices and charging",
              "Set prices per message part by destination; quote a message."),
    "charge": ("charging", "register", "Prices and charging",
               "Charge one message (or a stream of them with --file)."),
    "refund": ("charging", "register", "Prices and charging",
               "Give back a charged message's credits and its limit room."),
    "settle": ("holds", "register", "Prices and charging",
               "Make a hold final (at the parts sent, priced as held)."),
    "void": ("holds", "register", "Prices and charging",
             "Release a hold (a settled message's void is a refund)."),
    "dlr": ("holds", "register", "Prices and charging",
            "A delivery report: settles, voids or leaves a hold."),
    "holds": ("holds", "holds_app", "Prices and charging",
              "List open holds; settle or void those past their expiry."),
    "serve": ("serve", "register", "Prices and charging",
              "Serve the charging API over HTTP for gateway hosts."),
    "log": ("logs", "register", "Logs", "The credit log: every change of a balance."),
    "events": ("logs", "register", "Logs", "The event journal: everything that happened."),
    "usage": ("charging", "register", "Logs", "Spend and message counts per period or country."),
    "check": ("check", "register", "Logs",
              "Users low on credits or near a limit (for cron and monitoring)."),
    "verify": ("admin", "register_verify", "Logs",
               "Recompute balances and limit windows from the journal."),
    "help": ("base", "register_help", "Setup", "Show a command's help: help price set."),
    "demo": ("admin", "register", "Setup", "Walk through the tutorial on a throwaway database."),
    "db": ("admin", "db_app", "Setup", "Create and upgrade the database schema."),
    "config": ("admin", "config_app", "Setup", "Show and change settings (config file)."),
}


def suggestion(typo: str, names: list[str]) -> str:
    """`` Did you mean 'credits'?`` for the closest name, or nothing."""
    from difflib import get_close_matches

    lowered = typo.lower()
    # A name the typo starts or ends (`credit`, `refil`) beats a merely similar one.
    near = [n for n in names if len(lowered) >= 3 and (n.startswith(lowered)
                                                         or lowered.startswith(n))]
    near = near or get_close_matches(lowered, names, n=1, cutoff=0.6)
    return f" Did you mean {near[0]!r}?" if near else ""


def _load(name: str) -> Any:
    """Import and build one top-level command or group."""
    import importlib

    module_name, attr, panel, _ = LAZY[name]
    target = getattr(importlib.import_module(f"smscredits.commands.{module_name}"), attr)
    if not isinstance(target, typer.Typer):  # a register(app) function of top-level commands
        holder = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False,
                             add_completion=False)
        target(holder)
        target = holder
    built = typer.main.get_command(target)
    # Any: Typer's own classes carry rich_help_panel, the click Command they are typed as not.
    cmd: Any = (built.commands[name] if isinstance(built, TyperGroup) and name in built.commands
                else built)
    cmd.name, cmd.rich_help_panel = name, panel
    _set_metavars(cmd)
    return cmd


def _set_metavars(cmd: Any) -> None:
    from smscredits.commands.complete import completer

    for param in getattr(cmd, "params", []):
        param._custom_shell_complete = completer(cmd.name or "", param.name or "") or getattr(
            param, "_custom_shell_complete", None)
        if param.param_type_name == "argument":
            param.metavar = param.metavar or (param.name or "").upper()
            _plain_argument(param)
        elif not getattr(param, "is_flag", False):
            param.metavar = param.metavar or METAVARS.get(param.opts[0], "VALUE")
    for sub in getattr(cmd, "commands", {}).values():
        _set_metavars(sub)


def _plain_argument(param: Any) -> None:
    """Shown as ``USER`` or ``[USER]`` (Typer writes ``{USER}`` and ``USER <str>``)."""
    shown = param.metavar
    if not shown.startswith("["):
        shown = shown if param.required else f"[{shown}]"
        shown += "..." if param.nargs != 1 else ""
    param._usage_display_name = lambda: shown
    param.display_type_rich = lambda ctx: None


_NOT_PLAIN = object()


def _plain_value(annotation: Any, info: Any, value: Any) -> Any:
    """A value Typer would coerce to itself (a str, an in-range int, a list of str), as is;
    anything else is _NOT_PLAIN."""
    if annotation is str and type(value) is str:
        return value
    if annotation is int and not getattr(info, "clamp", False):
        number = value if type(value) is int else (
            int(value) if type(value) is str and value.isascii() and value.isdigit()
            and len(value) <= 18 else None)
        low, high = getattr(info, "min", None), getattr(info, "max", None)
        if number is not None and (low is None or number >= low) and (
                high is None or number <= high):
            return number
    if annotation == list[str] and isinstance(value, list | tuple) and all(
            type(v) is str for v in value):
        return list(value)
    return _NOT_PLAIN


@cache
def _plain_coercion_class() -> Any:
    """A Typer coercion that passes plain values straight through; None with a Typer whose
    internals differ (its own coercion then stays)."""
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
    except ImportError:
        return None

    @dataclass(frozen=True)
    class Plain(RuntimeParam):
        descriptor: Any

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            plain = _plain_value(self.annotation, self.parameter_info, value)
            if plain is not _NOT_PLAIN:
                return plain
            typer_own = build_runtime_param(self.descriptor)
            return typer_own._coerce_value(value, param=param, ctx=ctx)

    return Plain


def plain_coercion(params: list[Any]) -> None:
    """Coerce plain values without Pydantic.

    Typer builds a Pydantic TypeAdapter for every parameter it converts, and importing
    Pydantic costs a read command more than all its own work. Values that already are what
    the annotation asks for pass straight through; everything else (and so every error
    message) still goes to Typer's own coercion.
    """
    plain = _plain_coercion_class()
    if plain is None:
        return
    for param in params:
        desc = getattr(param, "type_descriptor", None)
        try:
            if (desc is not None and getattr(param, "_runtime_param", 0) is None
                    and desc.file_annotation is None and desc.parameter_info.parser is None):
                param._runtime_param = plain(desc.parameter_info, desc.annotation, desc)
        except (AttributeError, TypeError):  # another Typer: its own coercion stays
            return


# Arguments the command opens as files itself: Python takes any name the file system does.
_FILE_NAMES = frozenset({"file"})


def check_text(ctx: Any) -> None:
    """Refuse a text argument that is not valid UTF-8, naming it, before any command runs.

    Python hands such bytes over as lone surrogates (``$'\\xff'`` is ``'\\udcff'``), which
    no database, file or terminal can take: every parameter of every command and group
    passes through here once it is parsed.
    """
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        values = value if isinstance(value, list | tuple) else (value,)
        if param.name not in _FILE_NAMES and any(
                isinstance(v, str) and not is_text(v) for v in values):
            label = (param.opts[0] if param.param_type_name == "option"
                     else param.metavar or (param.name or "").upper())
            raise BadInput(f"bad {label}: not valid UTF-8 text")


# The root's options, which every command takes too (the examples use them).
GLOBAL_HELP = [
    ("--db URL", "Database URL or SQLite file."),
    ("--json, --jsonl, --csv", "Output for scripts."),
    ("--quiet, -q", "Print nothing on success."),
    ("--actor NAME", "Who is recorded as making changes."),
]


def format_globals(formatter: Any) -> None:
    with formatter.section("Global options (before or after the command)"):
        formatter.write_dl(GLOBAL_HELP)


class PlainCommand(TyperCommand):
    def format_options(self, ctx: Any, formatter: Any) -> None:
        super().format_options(ctx, formatter)
        format_globals(formatter)  # last before the example, which ends every help

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        plain_coercion(self.get_params(ctx))  # with the help option, made on first use
        rest = super().parse_args(ctx, args)
        check_text(ctx)
        return rest


class PlainGroup(TyperGroup):
    def format_options(self, ctx: Any, formatter: Any) -> None:
        super().format_options(ctx, formatter)
        if ctx.parent is not None:  # the root lists them as its own options
            format_globals(formatter)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        plain_coercion(self.get_params(ctx))
        rest = super().parse_args(ctx, args)
        check_text(ctx)
        return rest


class RootGroup(PlainGroup):
    """Reads global options anywhere; turns every error a user can cause into one line on
    stderr and its exit code."""

    def make_context(self, info_name: Any, args: list[str], parent: Any = None,
                     **extra: Any) -> Any:
        # Known before parsing, so that a parsing error is reported as JSON too.
        _PARSING.mode = "json" if "--json" in args or "--jsonl" in args else "table"
        try:
            return super().make_context(info_name, args, parent, **extra)
        except _ClickException as e:
            _usage_error(e)
        except SmsCreditsError as e:  # a global option's value (check_text)
            fail(e)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist(self, ctx, args))

    # Commands load on first use: `--help`, `--version` and every single command import and
    # build only what they run (the whole tree costs ~20 ms of a ~60 ms start).
    def list_commands(self, ctx: Any) -> list[str]:
        return list(LAZY)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        # Suggestions from the lazy table: Typer's own only know the commands loaded so far.
        try:
            return self._click_resolve_command(ctx, args)
        except _UsageError as e:
            if args and not args[0].startswith("-"):
                e.message = e.message + suggestion(args[0], list(LAZY))
            raise

    def get_command(self, ctx: Any, name: str) -> Any:
        if name not in self.commands and name in LAZY:
            self.commands[name] = _load(name)
        return self.commands.get(name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Commands in sections, in the order of the tutorial, without loading them."""
        for panel in PANELS:
            with formatter.section(panel):
                formatter.write_dl([(n, spec[3]) for n, spec in LAZY.items() if spec[2] == panel])

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


def _database_error(e: Exception) -> DatabaseError:
    from sqlalchemy import exc

    from smscredits.storage.engine import explain

    run = state()
    if run.handle is not None and isinstance(e, exc.DBAPIError):
        return explain(e, run.handle.url)
    from smscredits import config

    # The driver's own words, first line, with every secret of the setting masked.
    first = (str(getattr(e, "orig", None) or e).strip().splitlines() or [""])[0]
    try:
        setting = config.resolve("db", run.db_flag).value or ""
    except SmsCreditsError:  # an unreadable setting: mask what looks like a secret
        setting = ""
    detail = config.mask_text(first, setting)[:300]
    return DatabaseError(f"database error: {type(e).__name__}" + (f": {detail}" if detail else ""))


def fail(e: SmsCreditsError) -> None:
    output().error(e.code, e.message)
    raise typer.Exit(int(e.exit_code))


def output() -> Output:
    from smscredits.render import Output

    run = state()
    return Output(mode=run.mode, quiet=run.quiet)


def db(*, create: bool = False) -> Db:
    """The database for this invocation, opened (and checked) on first use. Only a command
    that creates what its user asked for (``create``) may create a missing SQLite file;
    for any other, a missing file is an error (exit 7) naming it."""
    run = state()
    if run.handle is None:
        from smscredits.storage.engine import open_db

        run.handle = open_db(run.db_flag, actor=run.actor, create=create)
    return run.handle


def reader() -> Db | LiteDb:
    """The database for a command that only reads: an existing SQLite file is opened with the
    stdlib ``sqlite3`` (no SQLAlchemy import, a fraction of the start-up); anything else is
    ``db()``."""
    run = state()
    if not run.lite_tried and run.handle is None:
        from smscredits.storage.lite import open_lite

        run.lite = open_lite(run.db_flag)
    run.lite_tried = True
    return run.lite if run.lite is not None else db()


def app(name: str, help_: str, example: str) -> typer.Typer:
    return typer.Typer(
        name=name, help=help_, cls=PlainGroup, no_args_is_help=True, epilog=f"Example: {example}",
        pretty_exceptions_enable=False, rich_markup_mode=None, add_completion=False,
    )


def command(
    target: typer.Typer, name: str | None = None, *, example: str, **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command with an example at the end of its help."""
    return target.command(name, epilog=f"Example: {example}", cls=PlainCommand, **kwargs)


def amount(text: str, *, what: str = "amount", signed: bool = False) -> int:
    from smscredits.amounts import parse_amount

    return parse_amount(text, what=what, signed=signed)


def register_help(root: typer.Typer) -> None:
    @root.command("help", cls=PlainCommand, epilog="Example: smscredits help price set")
    def help_(
        ctx: typer.Context,
        names: Annotated[list[str] | None, typer.Argument(
            metavar="[COMMAND [SUB]]", help="The command (and sub-command) to explain.")]
        = None,
    ) -> None:
        """Show the help of a command, as COMMAND --help does."""
        typer.echo(help_text(ctx, names or []), nl=False)


def help_text(ctx: Any, names: list[str]) -> str:
    """The help of the command that ``names`` leads to, from the root; a wrong name is a
    usage error with a suggestion."""
    current_ctx = ctx.find_root()
    current = current_ctx.command
    for name in names:
        known = list(LAZY) if current is current_ctx.find_root().command else list(
            getattr(current, "commands", {}))
        found = current.get_command(current_ctx, name) if hasattr(current, "get_command") \
            else None
        if found is None:
            raise BadInput(f"No such command {name!r} in {current_ctx.command_path}."
                           + suggestion(name, known), code="usage")
        current_ctx = type(ctx)(found, info_name=name, parent=current_ctx)
        current = found
    return str(current.get_help(current_ctx)) + "\n"
