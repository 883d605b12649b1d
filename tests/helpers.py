"""Small helpers the test files share: a run's exit code, its JSON, a balance, every row.

``run`` is what the ``cli`` and ``plain_cli`` fixtures return: anything with ``exit_code``,
``stdout`` and ``stderr``. JSON is read with exact Decimals for fractional numbers, as a
script reading amounts should.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

# Every table, migrations' bookkeeping included: a refused command must change none of them.
TABLES = ("users", "powers", "events", "messages", "prices", "refill_plans",
          "refill_applications", "alembic_version")


def ok(run: Any) -> Any:
    """The run, once it exited 0 without a traceback; a failure shows everything it printed."""
    assert run.exit_code == 0, (run.exit_code, run.stdout, run.stderr)
    assert "Traceback" not in run.stdout + run.stderr, (run.stdout, run.stderr)
    return run


def doc(run: Any) -> Any:
    """The JSON document on stdout, whatever the exit code: error documents too."""
    return json.loads(run.stdout, parse_float=Decimal)


def data(run: Any) -> Any:
    """The JSON document of a run that succeeded."""
    return doc(ok(run))


def lines(run: Any) -> list[dict[str, Any]]:
    """Every stdout line as JSON, whatever the exit code. A line that is not JSON (a blank
    one included) or an unterminated last line fails the test: a script reads each line."""
    assert run.stdout == "" or run.stdout.endswith("\n"), run.stdout
    return [json.loads(line, parse_float=Decimal) for line in run.stdout.split("\n")[:-1]]


def balance(cli: Any, user: str = "alice") -> Decimal:
    return data(cli("credits", "balance", user, "--json"))["balance"]


def credit_log(cli: Any, user: str = "alice") -> list[dict[str, Any]]:
    return data(cli("log", user, "--json", "--limit", "1000"))


def verified(cli: Any) -> bool:
    """``verify`` finds the ledger consistent, and says so without a traceback."""
    run = cli("verify")
    return run.exit_code == 0 and "Traceback" not in run.stdout + run.stderr


def dump(db: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to show that a refused command changed nothing."""
    with db.read() as conn:
        return {t: [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY 1")]
                for t in TABLES}


def jl(**fields: Any) -> str:
    """The fields as one JSON line of a ``charge --file`` input, without its line end."""
    return json.dumps(fields)


def kill_left(procs: Iterable[subprocess.Popen[Any]]) -> None:
    """Kill (and reap) whichever of a test's processes is still running at its end."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
