"""The README's tutorial is the demo's real output: regenerate it and compare.

Update the README after a change of output with ``UPDATE_README=1 python -m pytest
tests/test_readme.py``.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from freezegun import freeze_time
from typer.testing import CliRunner

from smscredits.cli import app
from smscredits.demo import STEPS

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- tutorial:start -->", "<!-- tutorial:end -->"


def render_tutorial(db_path: Path) -> str:
    """Every demo step as Markdown: its caption, the command and its output at 80 columns."""
    runner = CliRunner()
    blocks: list[str] = []
    with freeze_time("2026-11-25 09:30:00"):
        for caption, args in STEPS:
            result = runner.invoke(app, [*args, "--db", str(db_path)])
            assert result.exit_code == 0, (args, result.output)
            out = "\n".join(line.rstrip() for line in result.output.rstrip().splitlines())
            if caption:
                blocks.append(caption + "\n")
            blocks.append(f"```console\n$ smscredits {shlex.join(args)}\n{out}\n```\n")
    return "\n".join(blocks)


def test_readme_tutorial_is_the_demos_real_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("SMSCREDITS_ACTOR", "ops")
    monkeypatch.setenv("NO_COLOR", "1")
    text = README.read_text(encoding="utf-8")
    match = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), text, re.S)
    assert match, "README lacks the tutorial markers"
    fresh = render_tutorial(tmp_path / "tutorial.db")
    if os.environ.get("UPDATE_README"):
        text = text[: match.start(1)] + fresh + text[match.end(1) :]
        README.write_text(text, encoding="utf-8")
        return
    assert match.group(1) == fresh, "README tutorial is stale: run with UPDATE_README=1"


def test_output_fits_80_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("SMSCREDITS_ACTOR", "ops")
    tutorial = render_tutorial(tmp_path / "tutorial.db")
    blocks = re.findall(r"```console\n(.*?)```", tutorial, re.S)
    too_wide = [line for block in blocks for line in block.splitlines() if len(line) > 80]
    assert too_wide == []
