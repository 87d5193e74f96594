"""The text `init` writes and reads: config values escaped so that they read back as themselves
and add no setting, the owner's address a plain addr-spec, the command word found only in the
command position."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crtool.addresses import parse_owner_address
from crtool.cli import command_word
from crtool.config import render_config, settings_from_mapping, toml_string
from crtool.errors import UsageError

# Any Unicode text but lone surrogates (which are not text, and which toml_string refuses).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)))


@given(TEXT)
def test_a_value_reads_back_as_itself_and_adds_nothing(value: str) -> None:
    parsed = tomllib.loads(f"key = {toml_string(value)}\n")
    assert parsed == {"key": value}


@given(maildir=TEXT.filter(lambda t: "\0" not in t), sendmail=TEXT,
       database_url=TEXT, authserv_id=TEXT)
def test_the_whole_config_reads_back_as_the_settings_written(
        maildir: str, sendmail: str, database_url: str, authserv_id: str) -> None:
    home = Path("/home/alice/.crtool")
    settings = settings_from_mapping(home, {
        "address": "alice@example.test", "maildir": "/m/" + maildir, "sendmail": sendmail,
        "database_url": database_url, "authserv_id": authserv_id})
    read = settings_from_mapping(home, tomllib.loads(render_config(settings)))
    assert read == settings


def test_undecodable_bytes_are_refused_not_written() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        toml_string("/home/alice/\udcffMaildir")


@pytest.mark.parametrize("address", [
    "*@example.com", "@example.com", "*@*.example.com", "a*b@example.com", "a?b@example.com",
    "alice", "alice@", "@", "alice@example..test", "alice@-example.test", ".alice@example.test",
    "al..ice@example.test", "alice.@example.test", '"alice"@example.test', "ali ce@example.test",
    "alice@example.test\n", "<alice@example.test>", "alice@exa_mple.test", "x" * 65 + "@a.test",
    "alice@" + "a" * 64 + ".test"])
def test_owner_addresses_that_are_not_plain_are_refused(address: str) -> None:
    with pytest.raises(UsageError, match="not a plain address"):
        parse_owner_address(address)


@pytest.mark.parametrize("address", ["alice@example.test", "Alice.O'Neil+x@Mail.Example-1.test",
                                     "a@b", "x" * 64 + "@a.test", "a-b_c=d@x1.example"])
def test_plain_owner_addresses_are_taken(address: str) -> None:
    assert parse_owner_address(address) == address


@pytest.mark.parametrize(("words", "command"), [
    (["deliver"], "deliver"),
    (["--home", "/h", "deliver", "--bogus"], "deliver"),
    (["--home=/h", "--debug", "deliver"], "deliver"),
    (["--ho", "/h", "deliver"], "deliver"),
    (["--home", "deliver", "whitelist", "add", "x"], "whitelist"),
    (["whitelist", "add", "deliver", "--bogus"], "whitelist"),
    (["pending", "show", "deliver"], "pending"),
    (["--bogus"], None),
    ([], None),
])
def test_the_command_is_the_first_word_after_the_global_options(
        words: list[str], command: str | None) -> None:
    assert command_word(words) == command
