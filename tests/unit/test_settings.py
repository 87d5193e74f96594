"""The sample config documents every setting, and the settings this code reads are checked."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from crtool.config import Settings, render_config, settings_from_mapping

SAMPLE = Path(__file__).resolve().parents[2] / "etc" / "config.toml"


def test_the_sample_config_shows_every_setting_and_is_valid() -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    # A setting that follows another by default (hold_ttl follows confirm_ttl) is shown
    # commented out, so that a copy of the sample keeps following it.
    shown = set(data) | set(re.findall(r"^# ([a-z_]+) = ", text, flags=re.M))
    # HOME and the key ring's path come from where crtool runs (--home, or the system config
    # of hub mode), not from an owner's settings.
    assert shown == {f.name for f in fields(Settings)} - {"home", "keys_file"}
    assert settings_from_mapping(Path("/h"), data).subaddress_separators == "+"


@pytest.mark.parametrize("separators", ["", "+", "+-", "-_"])
def test_subaddress_separators_round_trip_through_init(separators: str) -> None:
    settings = settings_from_mapping(Path("/h"), {"address": "alice@example.test",
                                                  "subaddress_separators": separators})
    written = tomllib.loads(render_config(settings))
    assert settings_from_mapping(Path("/h"), written).subaddress_separators == separators


@pytest.mark.parametrize("separators", ["a", "@", ".", "=", " ", '"', "+\n", 5])
def test_subaddress_separators_that_would_break_addresses_are_refused(
        separators: object) -> None:
    with pytest.raises(ValueError, match="subaddress_separators"):
        settings_from_mapping(Path("/h"), {"address": "alice@example.test",
                                           "subaddress_separators": separators})
