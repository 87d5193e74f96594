"""Hypothesis over message bytes and envelope strings: `crtool deliver` never raises and never
tempfails (contract §3). Each example runs the real command, in this process, through
`crtool.cli.main` against a real SQLite home, with stdin and the environment replaced.

CRTOOL_FUZZ_EXAMPLES raises the count for a longer local run; fuzz/ has the atheris harness for
runs of hours. The number of examples run is printed and written to figures-fuzz.json.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crtool.cli import main
from tests.faults.common import write_figures
from tests.support import Mailbox

EXAMPLES = int(os.environ.get("CRTOOL_FUZZ_EXAMPLES", "150"))
OWNER = "alice@example.test"

# Pieces that have broken mail parsers before, for the structured half of the messages.
PIECES = [b"From:", b"Subject:", b"To:", b"Content-Type: multipart/mixed; boundary=",
          b"=?utf-8?b?", b"=?x?q?=FF?=", b"\x9d", b"\xff\xfe", b"\x00", b"\r", b"\n", b"\r\n",
          b" ", b"\t", b":", b"<", b">", b"@", b"\"", b"(", b")", b",", b"a" * 9000,
          b"bob@remote.test", OWNER.encode(), b"alice-confirm-aaaaaaaaaaaaaaaaaaaaaaaa",
          b"Auto-Submitted: auto-replied", b"List-Id: <x>", b"\n\n", b"From bob Thu\n"]
messages = st.one_of(
    st.binary(max_size=4096),
    st.lists(st.sampled_from(PIECES) | st.binary(max_size=40), max_size=60).map(b"".join),
)
ADDRESS_PIECES = ["alice", "-confirm-", "bob", "@", "example.test", "remote.test", "<", ">",
                  "\n", "\r", " ", "$(id)", ";", "`", "#@[]", "MAILER-DAEMON", "\udcff", "é"]
texts = st.one_of(st.text(max_size=300),
                  st.lists(st.sampled_from(ADDRESS_PIECES), max_size=12).map("".join))
env_bytes = st.binary(max_size=300).map(lambda b: b.replace(b"\0", b""))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    user_home = tmp_path_factory.mktemp("fuzz") / "alice"
    user_home.mkdir()
    box = Mailbox(user_home=user_home,
                  database_url=f"sqlite:///{user_home / '.crtool' / 'crtool.db'}")
    box.init()
    yield box.home


@contextmanager
def process_state(data: bytes, environ: dict[bytes, bytes]) -> Iterator[io.StringIO]:
    """stdin, stderr and the envelope variables of one delivery, restored afterwards."""
    saved_stdin = sys.stdin
    saved_env = {k: os.environb.get(k) for k in (b"SENDER", b"RECIPIENT", b"DTLINE")}
    sys.stdin = io.TextIOWrapper(io.BytesIO(data))
    for key in saved_env:
        os.environb.pop(key, None)
    os.environb.update(environ)
    err = io.StringIO()
    try:
        with redirect_stderr(err):
            yield err
    finally:
        sys.stdin = saved_stdin
        for key, value in saved_env.items():
            if value is None:
                os.environb.pop(key, None)
            else:
                os.environb[key] = value


RUNS = {"examples": 0, "held_or_dropped": 0}


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=messages, sender=texts, recipient=texts, raw_sender=env_bytes,
       raw_recipient=env_bytes, through_env=st.booleans())
def deliver_never_raises_and_never_tempfails(
        home: Path, data: bytes, sender: str, recipient: str, raw_sender: bytes,
        raw_recipient: bytes, through_env: bool) -> None:
    argv = ["--home", str(home), "deliver"]
    environ = {b"DTLINE": b"Delivered-To: x\n"}
    if through_env:
        environ.update({b"SENDER": raw_sender, b"RECIPIENT": raw_recipient})
    else:
        # The one-word form: a value starting with "-" must not be read as an option.
        argv += [f"--sender={sender}", f"--recipient={recipient}"]
    os.environ["CRTOOL_TEST_OUTBOX"] = str(home.parent / "outbox")
    with process_state(data, environ) as err:
        code = main(argv)
    RUNS["examples"] += 1
    # No one is whitelisted or blacklisted: every message is held, or dropped when it is a
    # confirmation that fails; never 0, never 100, never 111.
    assert code == 99, err.getvalue()
    line = err.getvalue()
    assert line.count("\n") == 1 and "Traceback" not in line, line
    RUNS["held_or_dropped"] += 1


def test_deliver_never_raises_and_never_tempfails(home: Path, tmp_path: Path) -> None:
    """The property, then the figures of this very run (how many examples ran and how many
    ended "done"), recorded by the same test so that no test order or worker split matters."""
    RUNS.update(examples=0, held_or_dropped=0)
    deliver_never_raises_and_never_tempfails(home)
    write_figures(tmp_path, "fuzz", {"hypothesis_examples": RUNS["examples"],
                                     "all_exited_done": RUNS["held_or_dropped"]})
    # Hypothesis ran the examples asked for (fewer only if it exhausted the strategies,
    # which these cannot be), and every one of them exited "done".
    assert RUNS["examples"] >= EXAMPLES
    assert RUNS["held_or_dropped"] == RUNS["examples"]
