"""System mode: one config file an admin owns, owners as database rows, and each owner's
settings as the system defaults with that owner's overrides on top.

`crtool --config FILE …` selects it. The file (TOML) holds what is the host's, not an owner's:
`database_url`, `sendmail`, `keys` (the key ring's path), `database_timeout`, `delimiter` (a
recipient is matched to its owner before any owner's settings are known, so the delimiter is
the host's), the `[lmtp]` table of the server's limits, and the defaults of every per-owner
setting (`confirm_ttl`, `challenge_limit`, `authserv_id`, …). An owner's row says where its
mail goes and which of those settings it overrides (a JSON object). The result is the same frozen
`Settings` a single owner's config.toml gives, so every other module works unchanged.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from crtool.config import (
    Settings,
    default_sendmail,
    parse_duration,
    read_toml,
    settings_from_mapping,
)
from crtool.errors import TemporaryFailure, UsageError

# Settings that are the host's: no owner overrides them.
SYSTEM_ONLY = frozenset({"home", "address", "maildir", "database_url", "sendmail", "mta",
                         "delivery", "keys_file", "lmtp_next", "database_timeout", "delimiter"})
PER_OWNER = frozenset(f.name for f in fields(Settings)) - SYSTEM_ONLY
# The profile of mail taken over LMTP: sysexits-like outcomes, trace lines added on delivery.
HUB_MTA = "lmtp"
# Stands in for an owner where a command needs only the host's settings (db, keys).
_HOST_ADDRESS = "postmaster@localhost"


@dataclass(frozen=True)
class LmtpLimits:
    """The `[lmtp]` table: where the server listens and what it lets one client use."""

    listen: str = "unix:/run/crtool/lmtp.sock"
    # Larger messages get 552 after DATA; the server holds at most this much per session.
    max_message_size: int = 50 * 1024 * 1024
    # More connections than this (in one process) get 421 at once; Postfix tries again later.
    max_sessions: int = 100
    # RFC 5321 asks for at least 100; more in one transaction get 452 and come again.
    max_recipients: int = 100
    # A session silent (or one DATA unfinished) this long is closed, its transaction dropped.
    timeout: int = 300
    # Deliveries carried out at once (threads) in each process; each holds one database
    # connection.
    workers: int = 8
    # Server processes sharing the listening socket. One process runs its deliveries under
    # one interpreter lock, so it uses one core at most; one process per core uses them all.
    processes: int = 1
    # After SIGTERM, how long transactions under way may take before the server exits.
    shutdown_grace: int = 60
    # The mode of a unix socket: Postfix's lmtp client (user postfix) must be able to connect.
    socket_mode: int = 0o660


@dataclass(frozen=True)
class System:
    """The host's config file, read and checked."""

    path: Path
    database_url: str
    sendmail: str
    keys: Path
    database_timeout: int
    delimiter: str
    lmtp: LmtpLimits
    defaults: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def home(self) -> Path:
        """The config's directory: templates/ overrides live there."""
        return self.path.parent


_LMTP_SIZES = {"max_message_size"}
_LMTP_COUNTS = {"max_sessions", "max_recipients", "workers", "processes", "socket_mode"}
_LMTP_DURATIONS = {"timeout", "shutdown_grace"}


def _lmtp_limits(table: Any) -> LmtpLimits:
    if not isinstance(table, dict):
        raise ValueError("[lmtp] must be a table")
    values: dict[str, Any] = {}
    for name, value in table.items():
        if name == "listen":
            if not isinstance(value, str) or not value:
                raise ValueError("lmtp.listen must be unix:PATH or HOST:PORT")
            values[name] = value
        elif name in _LMTP_SIZES | _LMTP_COUNTS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"lmtp.{name} must be a whole number >= 1")
            values[name] = value
        elif name in _LMTP_DURATIONS:
            values[name] = parse_duration(value)
            if values[name] < 1:
                raise ValueError(f"lmtp.{name} must be at least 1s")
        else:
            raise ValueError(f"unknown setting 'lmtp.{name}'")
    return LmtpLimits(**values)


def load_system(path: Path) -> System:
    """Read and check the system config; TemporaryFailure (one line) when it cannot be used."""
    data = read_toml(path)
    try:
        return _system_from_mapping(path.absolute(), data)
    except ValueError as error:
        raise TemporaryFailure(f"config {path}: {error}") from None


def _system_from_mapping(path: Path, data: dict[str, Any]) -> System:
    data = dict(data)
    lmtp = _lmtp_limits(data.pop("lmtp", {}))
    if "database_url" not in data:
        raise ValueError("setting 'database_url' is missing")
    host_keys = {"database_url", "sendmail", "keys", "database_timeout", "delimiter"}
    unknown = sorted(set(data) - host_keys - PER_OWNER)
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}")
    keys = Path(str(data.pop("keys", path.parent / "keys"))).expanduser()
    if not keys.is_absolute():
        keys = path.parent / keys
    host_names = ("database_url", "sendmail", "database_timeout", "delimiter")
    host: dict[str, Any] = {name: data.pop(name) for name in host_names if name in data}
    # Checked once here, as an owner would get them, so that a typo fails at start-up.
    probe = settings_from_mapping(path.parent, {**data, **host, "address": _HOST_ADDRESS})
    return System(path=path, database_url=probe.database_url,
                  sendmail=str(host.get("sendmail") or default_sendmail()), keys=keys,
                  database_timeout=probe.database_timeout, delimiter=probe.delimiter,
                  lmtp=lmtp, defaults=tuple(sorted(data.items())))


def _settings(system: System, address: str, overrides: dict[str, Any],
              maildir: str | None, lmtp_next: str | None) -> Settings:
    data: dict[str, Any] = {**dict(system.defaults), **overrides}
    data.update(address=address, database_url=system.database_url, sendmail=system.sendmail,
                database_timeout=system.database_timeout, delimiter=system.delimiter,
                lmtp_next=lmtp_next or "")
    if maildir:
        data["maildir"] = maildir
    settings = settings_from_mapping(system.home, data)
    # The hub's profile is not one an owner's config.toml or `deliver --mta` may name.
    return replace(settings, mta=HUB_MTA, delivery="maildir", keys_file=system.keys)


def host_settings(system: System) -> Settings:
    """Settings for the commands that concern the host, not an owner (db, keys)."""
    return _settings(system, _HOST_ADDRESS, {}, None, None)


def owner_settings(system: System, address: str, maildir: str | None, lmtp_next: str | None,
                   overrides_json: str) -> Settings:
    """One owner's settings: the system defaults, its overrides, its delivery target.
    An override that no longer checks (after an upgrade, say) is a TemporaryFailure."""
    try:
        overrides = json.loads(overrides_json) if overrides_json else {}
        return _settings(system, address, overrides, maildir, lmtp_next)
    except (ValueError, TypeError) as error:
        raise TemporaryFailure(f"owner {address}: {error}") from None


def parse_overrides(pairs: list[str], system: System, address: str) -> dict[str, Any]:
    """`--set NAME=VALUE` pairs: VALUE read as TOML (2, true, "x") or else as text (7d)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or name not in PER_OWNER:
            allowed = ", ".join(sorted(PER_OWNER))
            raise UsageError(f"--set {pair!r}: use NAME=VALUE with NAME one of {allowed}")
        try:
            overrides[name] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[name] = text.strip()
    try:
        _settings(system, address, overrides, None, None)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return overrides


def base_candidates(recipient: str, delimiter: str) -> list[str]:
    """The owner addresses a recipient may belong to, most specific first: for
    `ann-lee-confirm-x@example.test` that address, `ann-lee-confirm@…`, `ann-lee@…`, `ann@…`
    (an owner's own local part may hold the delimiter)."""
    local, _, domain = recipient.strip().strip("<>").rpartition("@")
    if not local or not domain:
        return []
    parts = local.lower().split(delimiter)
    return [f"{delimiter.join(parts[:n])}@{domain.lower()}" for n in range(len(parts), 0, -1)
            if parts[n - 1]]
