"""The bad-input corpus's harness: run a CLI verb in-process and check it failed as a user needs.

Every case in `tests/test_badinput_*.py` builds its input (never downloads it), runs one verb through
`headstart.cli.main`, and asserts: the exit code, that the message names the input and says a fix, no
traceback, and that files written before are unchanged (`tree_digest` before and after).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> CliResult:
    """`headstart ARGV...` in this process; argparse's own exits (usage errors) count as exit codes."""
    from headstart.cli import main

    capsys.readouterr()  # drop anything printed before
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: exit 2 with usage on stderr
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def assert_refused(res: CliResult, *, names: object, fix: bool = True, code: int = 2) -> None:
    """Exit `code`, the message names `names` (a path or value), says a fix, and shows no traceback."""
    assert "Traceback" not in res.text, res.text
    assert res.code == code, f"exit {res.code}, wanted {code}:\n{res.text}"
    assert str(names) in res.text, f"message does not name {names!r}:\n{res.text}"
    if fix:
        assert re.search(r"\bfix\b", res.text, re.IGNORECASE), f"message says no fix:\n{res.text}"


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below `root` (relative path -> digest): compare before and after a verb."""
    root = Path(root)
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


#: What a cheap refusal must come before: reading data, building a backbone, embedding.
EXPENSIVE_WORK = (
    "headstart.data.load_dataset",
    "headstart.backbones.create_backbone",
    "headstart.features.embed",
)


def trip_expensive_work(monkeypatch: pytest.MonkeyPatch, why: str, *more: str) -> None:
    """Make EXPENSIVE_WORK (and `more` targets) fail the test with `why` if it starts. Patch only names
    that modules look up when called (a module imported under the patch keeps the fake otherwise)."""

    def tripped(*_a: object, **_k: object) -> None:
        raise AssertionError(why)

    for target in (*EXPENSIVE_WORK, *more):
        monkeypatch.setattr(target, tripped)
