"""The small exception hierarchy that the CLI turns into one line and an exit code.

Errors are data: each carries what the one line on stderr needs, and `cli.main` is the only place
that turns them into exit codes, so library code never calls `sys.exit`.
"""

from __future__ import annotations


class CrtoolError(Exception):
    """Base of every error crtool raises on purpose."""


class TemporaryFailure(CrtoolError):
    """The environment is broken (database, disk, keys, config, sendmail): the MTA must retry.

    Never raised for a strange message; a strange message is held.
    """


class PermanentFailure(CrtoolError):
    """The message must be bounced; raised only where the owner's config asks for a bounce."""


class UsageError(CrtoolError):
    """The command line or a pattern the owner typed is wrong."""


class NotFound(CrtoolError):
    """The owner named something (a held message id) that is not there."""


class BadToken(CrtoolError):
    """A confirm token that releases nothing; `reason` names why, for the event log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
