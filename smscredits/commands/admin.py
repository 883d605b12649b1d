"""`db` (schema migrations) and `config` (settings and where they come from)."""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Annotated

import typer

from smscredits.commands.base import app, command, output, state

db_app = app("db", "Create and upgrade the database schema.", "smscredits db upgrade")
config_app = app("config", "Show and change settings (config file).",
                 "smscredits config set default_tz Europe/Budapest")


@command(db_app, "upgrade", example="smscredits --db postgresql+psycopg://gw@db1/sms db upgrade")
def db_upgrade() -> None:
    """Create the schema or bring it up to date (safe to run again)."""
    from smscredits.storage.engine import describe, open_db
    from smscredits.storage.migrate import upgrade

    run = state()
    handle = run.handle = open_db(run.db_flag, actor=run.actor, check=False)
    before, after = upgrade(handle)
    where = describe(handle.url)
    text = (f"{where}: schema already at {after}" if before == after
            else f"{where}: schema upgraded from {before or 'empty'} to {after}")
    output().message(text, {"database": where, "before": before, "after": after})


@command(db_app, "status", example="smscredits db status --json")
def db_status() -> None:
    """Show the database in use and whether its schema is current."""
    from smscredits.storage.engine import HEAD, describe, open_db

    run = state()
    handle = run.handle = open_db(run.db_flag, actor=run.actor, check=False, create=False)
    current = handle.schema_version()
    data = {"database": describe(handle.url), "schema": current, "expected": HEAD,
            "up_to_date": current == HEAD}
    out = output()
    out.quiet = out.quiet and current == HEAD  # --quiet silences a success only
    out.record(data, [("database", "Database"), ("schema", "Schema"),
                           ("expected", "Expected"), ("up_to_date", "Up to date")])
    if current != HEAD:
        raise typer.Exit(7)


@command(config_app, "show", example="smscredits config show --json")
def config_show() -> None:
    """Effective settings and where each comes from (flag, env, file, default)."""
    from smscredits import config

    rows, run = [], state()
    for key, (env, meaning) in config.KEYS.items():
        flag = run.db_flag if key == "db" else run.actor if key == "actor" else None
        s = config.resolve(key, flag)
        value = _shown(key, s.value)
        rows.append({"key": key, "value": value, "source": s.source, "env": env,
                     "meaning": meaning})
    for key, value in config.dlr_settings().items():
        rows.append({"key": key, "value": value, "source": "file", "env": None,
                     "meaning": "what this delivery status does to a hold"})
    output().rows(rows, [("key", "Key"), ("value", "Value"), ("source", "Source"),
                         ("env", "Environment")], title=f"Settings ({config.config_file()})",
                  optional={"source": 2, "env": 1})


@command(config_app, "set", example="smscredits config set default_tz Europe/Budapest")
def config_set(
    key: Annotated[str, typer.Argument(help="db, default_tz, actor, hold_ttl, hold_expiry, "
                                            "void_settled, serve.token, serve.admin_token, "
                                            "or dlr.<kannel|jasmin|smpp>.<STATUS>.")],
    value: Annotated[str | None, typer.Argument(help="New value; leave out to unset; - "
                                                "reads a token from stdin.")] = None,
) -> None:
    """Write a setting to the config file (leave the value out to remove it)."""
    from smscredits import config, validate

    if key == "default_tz" and value is not None:
        validate.time_zone(value)
    if key == "db" and value is not None:
        from smscredits.storage.engine import to_url

        to_url(value)
    if value == "-" and key in config.SECRET_KEYS:  # kept out of the shell's history
        value = sys.stdin.readline().strip()
    if value is not None and key in config.SECRET_KEYS:
        from smscredits.serve.auth import check_token

        check_token(value, key)
    if value is not None:
        from smscredits import holds

        holds.check_setting(key, value)
    path = config.write_setting(key, value, None)
    shown = _shown(key, value)
    output().message(f"{path}: {key} = {shown}" if value is not None else f"{path}: {key} unset",
                     {"file": str(path), "key": key, "value": shown})


def _shown(key: str, value: str | None) -> str | None:
    """A setting's value as output shows it: a URL's password and a token masked."""
    from smscredits import config

    if not value:
        return value
    if key in config.SECRET_KEYS:
        return config.MASK
    return config.mask_url(value) if key == "db" else value


def register(root: typer.Typer) -> None:
    @command(root, "demo", rich_help_panel="Setup", example="smscredits demo")
    def demo(
        keep: Annotated[str | None, typer.Option(help="Keep the demo database at this path "
                                                 "instead of a throwaway one.")] = None,
    ) -> None:
        """Walk through the tutorial on a throwaway SQLite database."""
        import tempfile
        from pathlib import Path

        from smscredits.demo import STEPS

        with tempfile.TemporaryDirectory(prefix="smscredits-demo-") as tmp:
            path = keep or str(Path(tmp) / "demo.db")
            if keep and Path(keep).exists():
                from smscredits.errors import Conflict

                raise Conflict(f"{keep!r} already exists: give a new path to --keep")
            _run_steps(STEPS, path)


def _run_steps(steps: list[tuple[str, list[str]]], path: str) -> None:
    import shlex

    from smscredits.cli import app

    console = output().console()
    # --quiet: the steps run, and nothing but their errors is printed (one shows JSON).
    shown = (contextlib.redirect_stdout(io.StringIO()) if output().silent
             else contextlib.nullcontext())
    command_ = typer.main.get_command(app)
    quiet = ["--quiet"] if output().silent else []  # also what a step says on stderr
    for caption, args in steps:
        if caption:
            console.print(f"\n[bold]{caption}[/bold]")
        console.print(f"[dim]$[/dim] smscredits {shlex.join(args)}", markup=True, highlight=False)
        console.file.flush()
        with contextlib.suppress(typer.Exit), shown:
            command_.main([*args, *quiet, "--db", path], prog_name="smscredits",
                          standalone_mode=False)


def register_verify(root: typer.Typer) -> None:
    @command(root, "verify", rich_help_panel="Logs", example="smscredits verify --json")
    def verify() -> None:
        """Recompute every balance and limit window from the journal; check its hash chains."""
        from smscredits import verify as verify_mod
        from smscredits.commands.base import db

        report = verify_mod.verify(db())
        out = output()
        out.quiet = out.quiet and report.ok  # --quiet silences a success only
        if out.machine:
            out.one({"ok": report.ok, "accounts": report.accounts, "events": report.events,
                     "problems": report.problems})
        elif report.ok:
            out.message(f"ledger verified: {report.accounts} account(s), {report.events} "
                        "event(s): balances, windows and chains agree")
        else:
            out.rows(report.problems, [("check", "Check"), ("user", "User"),
                                       ("detail", "Problem"), ("expected", "Journal"),
                                       ("found", "Stored"), ("event_id", "Event")],
                     title="Ledger differences", optional={"event_id": 1})
        if not report.ok:
            raise typer.Exit(1)
