"""System mode's config: host settings, per-owner defaults and overrides, recipient -> owner."""

from __future__ import annotations

from pathlib import Path

import pytest

from crtool import owners
from crtool.delivery import Answer
from crtool.errors import TemporaryFailure, UsageError
from crtool.lmtp import reply_for


def system(tmp_path: Path, text: str) -> owners.System:
    path = tmp_path / "crtool.toml"
    path.write_text(text)
    return owners.load_system(path)


def test_owner_settings_are_defaults_then_overrides(tmp_path: Path) -> None:
    # The file's confirm_ttl is every owner's default; an owner's override wins; what is the
    # host's (database, sendmail, keys, delimiter) no owner can change.
    hub = system(tmp_path, 'database_url = "sqlite:////x/hub.db"\nsendmail = "/bin/true"\n'
                 'confirm_ttl = "7d"\nchallenge_limit = 2\n[lmtp]\nmax_sessions = 5\n')
    assert hub.keys == tmp_path / "keys" and hub.lmtp.max_sessions == 5
    plain = owners.owner_settings(hub, "alice@example.test", "/m/alice", None, "")
    assert (plain.confirm_ttl, plain.challenge_limit, plain.mta) == (7 * 86400, 2, "lmtp")
    assert plain.keys_path == tmp_path / "keys" and plain.maildir == Path("/m/alice")
    tuned = owners.owner_settings(hub, "bob@example.test", None, "unix:/run/dovecot/lmtp",
                                  '{"confirm_ttl": 3600}')
    assert tuned.confirm_ttl == 3600 and tuned.lmtp_next == "unix:/run/dovecot/lmtp"
    with pytest.raises(UsageError):
        owners.parse_overrides(["database_url=sqlite://"], hub, "bob@example.test")
    assert owners.parse_overrides(["challenge_limit=3", "confirm_ttl=2d"], hub,
                                  "bob@example.test") == {"challenge_limit": 3,
                                                          "confirm_ttl": "2d"}


@pytest.mark.parametrize("text, says", [
    ("sendmail = '/bin/true'\n", "database_url"),
    ("database_url = 'sqlite://'\nmaildir = '/x'\n", "unknown setting 'maildir'"),
    ("database_url = 'sqlite://'\nconfirm_ttl = 'soon'\n", "not a duration"),
    ("database_url = 'sqlite://'\n[lmtp]\nworkers = 0\n", "lmtp.workers"),
    ("database_url = 'sqlite://'\n[lmtp]\nport = 24\n", "lmtp.port"),
    ("database_url = [", "not valid TOML"),
])
def test_a_bad_system_config_is_one_line(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(TemporaryFailure, match=says):
        system(tmp_path, text)


def test_a_recipient_names_its_owner_through_the_delimiter() -> None:
    assert owners.base_candidates("Alice-Confirm-ABC@Example.TEST", "-") == [
        "alice-confirm-abc@example.test", "alice-confirm@example.test", "alice@example.test"]
    assert owners.base_candidates("ann-lee-confirm-x@example.test", "-")[2] == \
        "ann-lee@example.test"
    assert owners.base_candidates("<bob@example.test>", "-") == ["bob@example.test"]
    assert owners.base_candidates("no-at-sign", "-") == []


def test_lmtp_replies_say_250_450_550_and_nothing_a_sender_wrote_breaks_them() -> None:
    assert reply_for(Answer("lmtp", "held", "held as abc")) == "250 2.0.0 held as abc"
    assert reply_for(Answer("lmtp", "tempfail", "database away")).startswith("450 4.3.0 ")
    assert reply_for(Answer("lmtp", "bounced", "")).startswith("550 5.7.1 ")
    assert reply_for(Answer("lmtp", "held", "to x\r\n250 forged\x00é")) == \
        "250 2.0.0 to x 250 forged??"
