"""Exit codes: one table per MTA profile, and an unknown profile is an error, never qmail's."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from crtool import delivery, exits
from crtool.client import Request
from crtool.config import load_settings
from crtool.errors import TemporaryFailure
from crtool.exits import Outcome
from crtool.profiles import MTA_PROFILES


def test_each_profile_has_its_table() -> None:
    assert [exits.code(o, "qmail") for o in Outcome] == [0, 99, 99, 99, 99, 100, 111]
    for mta in (*MTA_PROFILES[1:], exits.GUESSED):
        assert [exits.code(o, mta) for o in Outcome] == [0, 0, 0, 0, 0, 77, exits.EX_TEMPFAIL]
    assert exits.EX_TEMPFAIL == 75


def test_an_unknown_profile_raises_instead_of_speaking_qmail() -> None:
    with pytest.raises(ValueError, match="unknown MTA profile 'smtp'"):
        exits.code(Outcome.HELD, "smtp")
    with pytest.raises(ValueError, match="unknown MTA profile"):
        exits.stderr_line(Outcome.TEMPFAIL, "", "x")


def test_stderr_line_carries_the_status_code_only_under_sysexits() -> None:
    assert exits.stderr_line(Outcome.HELD, "postfix", "held") is None
    assert exits.stderr_line(Outcome.HELD, "qmail", "held  as\n x") == "crtool: held as x"
    assert exits.stderr_line(Outcome.TEMPFAIL, "postfix", "disk") == "4.3.0 crtool: disk"
    assert exits.stderr_line(Outcome.BOUNCED, "exim", "no") == "5.7.1 crtool: no"
    assert exits.stderr_line(Outcome.TEMPFAIL, "qmail", "disk") == "crtool: disk"


def test_a_config_naming_an_unknown_profile_is_a_broken_config(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('address = "alice@example.test"\nmta = "smtp"\n')
    with pytest.raises(TemporaryFailure, match="setting 'mta' must be one of"):
        load_settings(tmp_path)
    # The delivery defers as for any broken config: 111 where qmail runs it, else 75.
    for environ, code in (({b"DTLINE": b"Delivered-To: alice@example.test\n"}, 111), ({}, 75)):
        answer = delivery.handle(tmp_path, Request(environ=environ),
                                 io.BytesIO(b"From: a@b.test\n\nhi\n"), delivery.OneShot(),
                                 fast=True)
        assert answer.outcome == Outcome.TEMPFAIL.value
        got, line = delivery.status(answer)
        assert got == code
        assert "setting 'mta'" in line

