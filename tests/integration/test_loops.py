"""Mail loops, with real processes end to end: every message is carried by the relay stand-in
(tests/bin/relay-sendmail) into the recipient's delivery program with qmail-local's environment,
as qmail on one machine would carry it, and every message carried is logged and counted.

Two crtool owners writing to each other must exchange at most two messages per conversation
started (the message and one challenge), even behind an MTA that fills in the null envelope
sender of a challenge. A naive vacation program (answers everything, no Auto-Submitted) gets at
most one challenge per window, whichever address it answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, Mailbox, crtool_executable, message

RELAY = REPO / "tests" / "bin" / "relay-sendmail"
VACATION = REPO / "tests" / "bin" / "vacation-responder"
ALICE = "alice@example.test"
BOB = "bob@remote.test"
DELIVER = [crtool_executable(), "deliver"]


class Relay:
    """The machine's mail system: the map of domains to owners and the log of carried mail."""

    def __init__(self, tmp_path: Path, rewrite_null: bool = False,
                 vacation_to: str = "from") -> None:
        self.map_path = tmp_path / "relay.json"
        self.log = tmp_path / "relay-log"
        self.owners: dict[str, dict[str, Any]] = {}
        self.env = {"CRTOOL_TEST_RELAY": str(self.map_path),
                    "CRTOOL_TEST_RELAY_LOG": str(self.log),
                    "CRTOOL_TEST_VACATION_TO": vacation_to}
        if rewrite_null:
            self.env["CRTOOL_TEST_RELAY_REWRITE_NULL"] = "1"

    def serve(self, domain: str, home: Path, user: str, command: list[str]) -> None:
        """Mail for `domain` goes to `command`, run as qmail-local runs a .qmail line."""
        self.owners[domain] = {"home": str(home), "user": user, "command": command}
        self.map_path.write_text(json.dumps(self.owners))

    def send(self, sender: str, recipient: str, data: bytes) -> None:
        """Inject one message, as a person's mail client would through sendmail."""
        env = {"PATH": "/usr/bin:/bin", **self.env}
        subprocess.run([sys.executable, str(RELAY), "-f", sender, "--", recipient], input=data,
                       env=env, check=True, timeout=300)

    def carried(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.log.glob("*.json"))]


def crtool_owner(tmp_path: Path, database_url: str, address: str) -> Mailbox:
    """An owner set up with `crtool init`, sending through the relay. Both owners share one
    database, as contract §7 allows: every row carries its owner."""
    user = address.split("@")[0]
    home = tmp_path / user
    home.mkdir(mode=0o755, exist_ok=True)
    box = Mailbox(user_home=home, database_url=database_url, address=address)
    box.init("--sendmail", str(RELAY))
    return box


def held(box: Mailbox) -> list[tuple[str, str]]:
    items = json.loads(box.ok("pending", "list", "--json", "--all"))
    return sorted((m["sender"], m["reason"]) for m in items)


@pytest.mark.parametrize("rewrite_null", [False, True], ids=["null-sender", "sender-rewritten"])
def test_two_crtool_owners_exchange_at_most_two_messages(
        tmp_path: Path, database_url: str, rewrite_null: bool) -> None:
    relay = Relay(tmp_path, rewrite_null=rewrite_null)
    alice = crtool_owner(tmp_path, database_url, ALICE)
    bob = crtool_owner(tmp_path, database_url, BOB)
    relay.serve("example.test", alice.user_home, "alice", DELIVER)
    relay.serve("remote.test", bob.user_home, "bob", DELIVER)

    relay.send(BOB, ALICE, message(BOB, "Hello Alice", to=ALICE))
    carried = relay.carried()
    assert [(m["recipient"], m["exit"]) for m in carried] == [(ALICE, 99), (BOB, 99)]
    challenge = carried[1]
    assert challenge["auto_submitted"] == "auto-replied"
    # bob's crtool holds alice's challenge without answering it.
    assert held(alice) == [(BOB, "challenged")]
    expected_reason = "challenge_sender" if rewrite_null else "null_sender"
    assert [reason for _, reason in held(bob)] == [expected_reason]

    # The other way round: again the message and one challenge, and no more.
    relay.send(ALICE, BOB, message(ALICE, "Hello Bob", to=BOB))
    assert len(relay.carried()) == 4
    assert all(m["hops"] <= 2 for m in relay.carried())


@pytest.mark.parametrize("vacation_to", ["from", "sender"])
def test_a_naive_vacation_program_gets_one_challenge_per_window(
        tmp_path: Path, database_url: str, vacation_to: str) -> None:
    """"from": it answers the challenge's Reply-To, which confirms (nothing says it is
    automatic), and its later answers arrive whitelisted. "sender": it answers the envelope
    sender, null for a challenge, so the challenge goes unanswered and its later answers are
    held without a second challenge."""
    relay = Relay(tmp_path, vacation_to=vacation_to)
    alice = crtool_owner(tmp_path, database_url, ALICE)
    bob_home = tmp_path / "bob"
    bob_home.mkdir(mode=0o755)
    relay.serve("example.test", alice.user_home, "alice", DELIVER)
    relay.serve("remote.test", bob_home, "bob", [sys.executable, str(VACATION)])

    for n in range(3):
        relay.send(ALICE, BOB, message(ALICE, f"Question {n}", to=BOB))
    carried = relay.carried()
    challenges = [m for m in carried if m["sender"] == ""]
    assert len(challenges) == 1
    assert all(m["exit"] in (0, 99) for m in carried), carried
    # At most: message, answer, challenge, answer to the challenge; never a longer chain.
    assert all(m["hops"] <= 4 for m in carried)
    if vacation_to == "from":
        # inject, answer, challenge, answer to the confirm address; then inject, answer (x2).
        assert len(carried) == 8
        assert held(alice) == [(BOB, "challenged")]
        assert len(alice.maildir_messages()) == 1
        assert alice.run("whitelist", "check", BOB).returncode == 0
    else:
        # Three injected, three answers, one challenge that nobody answers.
        assert len(carried) == 7
        assert held(alice) == [(BOB, "challenged"), (BOB, "sender_rate_limit"),
                               (BOB, "sender_rate_limit")]
