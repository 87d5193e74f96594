"""Sending mail: the Outbox protocol and the sendmail implementation.

A challenge goes out with a null envelope sender (`-f ''`), so nothing can bounce back to the
owner, and to exactly one recipient given after `--`, so no address can be read as an option.
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Protocol

from crtool.errors import TemporaryFailure


class Outbox(Protocol):
    def send(self, recipient: str, message: bytes) -> None:
        """Hand one message to the MTA; raise TemporaryFailure when it could not."""


class SendmailOutbox:
    """Runs the configured sendmail command with `-i -f '' -- RECIPIENT`."""

    def __init__(self, command: str, timeout: float) -> None:
        self.command = command
        self.timeout = timeout

    def argv(self, recipient: str) -> list[str]:
        return [*shlex.split(self.command), "-i", "-f", "", "--", recipient]

    def send(self, recipient: str, message: bytes) -> None:
        argv = self.argv(recipient)
        try:
            result = subprocess.run(  # noqa: S603 - argv list, no shell; the owner's command
                argv, input=message, capture_output=True, timeout=self.timeout, check=False
            )
        except FileNotFoundError:
            raise TemporaryFailure(f"sendmail {argv[0]} not found") from None
        except PermissionError:
            raise TemporaryFailure(f"sendmail {argv[0]} is not executable") from None
        except subprocess.TimeoutExpired:
            raise TemporaryFailure(
                f"sendmail {argv[0]} did not finish within {self.timeout:g} s") from None
        if result.returncode != 0:
            said = result.stderr.decode("utf-8", "replace").strip().splitlines()
            why = f": {said[0][:200]}" if said else ""
            raise TemporaryFailure(f"sendmail {argv[0]} exited {result.returncode}{why}")
