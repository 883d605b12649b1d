"""Errors a user can cause, each with a stable exit code (documented in the README)."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILURE = 1  # verify found differences, or a batch had bad lines
    USAGE = 2  # bad input: amounts, names, numbers, zones, files, options
    NOT_FOUND = 3  # unknown user, power, plan, message, price
    INSUFFICIENT = 4  # not enough credits (balance plus overdraft)
    LIMIT = 5  # a daily, weekly or monthly limit would be exceeded
    CONFLICT = 6  # already exists, disabled user, idempotency conflict
    DATABASE = 7  # database unreachable, read-only, malformed URL or outdated schema


class SmsCreditsError(Exception):
    """Base of every error a user can cause; carries a machine-readable code."""

    exit_code: Exit = Exit.FAILURE
    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadInput(SmsCreditsError):
    exit_code = Exit.USAGE
    code = "bad_input"


class NotFound(SmsCreditsError):
    exit_code = Exit.NOT_FOUND
    code = "not_found"


class InsufficientCredits(SmsCreditsError):
    exit_code = Exit.INSUFFICIENT
    code = "insufficient_credits"



class Conflict(SmsCreditsError):
    exit_code = Exit.CONFLICT
    code = "conflict"


class DatabaseError(SmsCreditsError):
    exit_code = Exit.DATABASE
    code = "database_unavailable"
    # The transaction failed and left nothing behind, for a reason that may not hold on a
    # second try: a deadlock, a serialization failure, a connection found dropped.
    transient: bool = False

