"""Errors a user can act on: each says what went wrong, naming the input, and how to fix it."""

from __future__ import annotations


class HeadstartError(Exception):
    """A problem with the user's input or environment, with the fix spelled out."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\n  fix: {self.fix}"


class BadInput(Exception):
    """One input (file, text, clip) that cannot be used; `reason` is short and names the problem.

    Readers raise it per item; callers skip the item and report the reason (or fail with --strict).
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
