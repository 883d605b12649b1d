"""Run smscredits on a moved clock: real time plus an offset, running on.

    SMSCREDITS_TEST_CLOCK_OFFSET_US=-5000000 python tests/shifted_clock.py charge --file -

runs ``smscredits charge --file -`` on a clock 5 s behind the host's (the offset is integer
microseconds; none: the host's clock). ``SMSCREDITS_TEST_CLOCK_OFFSET_US=@FILE`` takes the
offset from FILE at every reading of the clock instead: a test sets the clocks of running
co-processes together, and sets them again for its next round.

    python tests/shifted_clock.py --each-line

runs one smscredits command per line of stdin (a JSON list of its arguments), one after
another in this one process, and answers each with a JSON line: its ``exit_code``,
``stdout`` and ``stderr``. Used by tests/test_races.py.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timedelta

OFFSET_ENV = "SMSCREDITS_TEST_CLOCK_OFFSET_US"


def write_offset(path: os.PathLike[str] | str, offset_us: int) -> None:
    """Set a clock file's offset (µs): one write of a fixed width, which ``offset_reader``
    reads whole."""
    with open(path, "w") as f:
        f.write(f"{offset_us:24d}")


def offset_reader(setting: str) -> Callable[[], timedelta]:
    if not setting.startswith("@"):
        fixed = timedelta(microseconds=int(setting))
        return lambda: fixed
    fd = os.open(setting[1:], os.O_RDONLY)

    def read() -> timedelta:
        # One read of the whole (short) file: the test replaces its content in one write.
        return timedelta(microseconds=int(os.pread(fd, 64, 0) or b"0"))

    return read


def each_line() -> None:
    from typer.testing import CliRunner

    from smscredits.cli import app

    runner = CliRunner()
    for line in sys.stdin:
        result = runner.invoke(app, json.loads(line))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        print(json.dumps({"exit_code": result.exit_code, "stdout": result.stdout,
                          "stderr": result.stderr}), flush=True)


def main() -> None:
    from smscredits import clock
    from smscredits.cli import main as smscredits_main

    offset = offset_reader(os.environ.get(OFFSET_ENV, "0"))
    real_now = clock.now

    def shifted_now() -> datetime:
        return real_now() + offset()

    clock.now = shifted_now  # every business timestamp comes from clock.now
    if sys.argv[1:] == ["--each-line"]:
        each_line()
        return
    sys.argv = ["smscredits", *sys.argv[1:]]
    smscredits_main()


if __name__ == "__main__":
    main()
