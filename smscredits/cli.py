"""The `smscredits` command: the root app, its global options, and the sub-apps."""

from __future__ import annotations

from typing import Annotated

import typer

from smscredits import __version__
from smscredits.commands.base import RootGroup, set_globals

app = typer.Typer(
    name="smscredits",
    cls=RootGroup,
    help="Manage the SMS credits of an SMS gateway's users: credits powers, prepaid "
    "credits, spending limits, refills, per-message charges, and the credit log.",
    epilog="Example: smscredits demo   (the tutorial, on a throwaway database)",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: Typer's Rich help pulls in Markdown and Pygments and doubles the cold start
    # of `--help`; RootGroup groups the commands as the tutorial does instead.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"smscredits {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    db: Annotated[str | None, typer.Option(metavar="URL", help="Database URL or SQLite file "
                                           "(else $SMSCREDITS_DB, the config file, the default "
                                           "file).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Print JSON lines.")] = False,
    csv: Annotated[bool, typer.Option("--csv", help="Print CSV (lists only).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")]
    = False,
    actor: Annotated[str | None, typer.Option(metavar="NAME", help="Who is recorded as "
                                              "making changes (default: login name).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    # Global options may also follow the command: RootGroup moves them here.
    set_globals(db=db, actor=actor, modes={"json": json_, "jsonl": jsonl, "csv": csv},
                quiet=quiet)



def main() -> None:
    # A fixed name, so that `python -m smscredits` reads the same completion variable.
    app(prog_name="smscredits")
