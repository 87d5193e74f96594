"""The owner's settings, read from HOME/config.toml on request and never at import.

Settings are a frozen value: every other module receives them as an argument, so nothing looks up
global configuration behind the caller's back. A config that cannot be read or does not make sense
is a broken environment (a temporary failure for `deliver`), never a reason to drop mail.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crtool.errors import TemporaryFailure
from crtool.profiles import MTA_PROFILES

if TYPE_CHECKING:
    from crtool.addresses import OwnerAddress

CONFIG_NAME = "config.toml"
KEYS_NAME = "keys"
DATABASE_NAME = "crtool.db"

DELIVERY_MODES = ("continue", "maildir")
BLACKLIST_ACTIONS = ("drop", "bounce")
# "observe": nothing is challenged or held, what enforce would do is recorded (crtool/observe.py).
MODES = ("enforce", "observe")

# Far above what any MTA passes by default (Postfix 10 MB, Exim 50 MB) and above SQLite's 1 GB
# limit on one value, so real mail is held; finite, so /dev/zero on stdin is not read forever.
DEFAULT_MAX_MESSAGE_SIZE = 2 * 1024 * 1024 * 1024

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int) -> int:
    """Seconds in "14d", "24h", "90m", "300s", "300" or an integer; ValueError otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"negative duration: {text}")
        return text
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 14d, 24h, 30m, 300s)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: int) -> str:
    """The shortest exact text for a duration: 1209600 -> "14d", 5400 -> "90m"."""
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def default_sendmail() -> str:
    """qmail's sendmail where it exists, since /usr/sbin/sendmail may belong to another MTA."""
    if Path("/var/qmail/bin/sendmail").exists():
        return "/var/qmail/bin/sendmail"
    return "/usr/sbin/sendmail"


@dataclass(frozen=True)
class Settings:
    """Everything the owner can set; defaults follow the design contract."""

    home: Path
    address: str
    maildir: Path
    database_url: str
    sendmail: str = field(default_factory=default_sendmail)
    mta: str = "qmail"
    delivery: str = "continue"
    delimiter: str = "-"
    blacklist_action: str = "drop"
    confirm_ttl: int = 14 * 86400
    # How long a held message is kept; 0 means as long as its token is valid (confirm_ttl).
    hold_ttl: int = 0
    challenge_limit: int = 1
    challenge_window: int = 86400
    challenge_global_limit: int = 30
    sendmail_timeout: int = 60
    database_timeout: int = 30
    authserv_id: str = ""
    # Hub mode (owners.py): accepted and released mail goes on to this LMTP server instead of
    # the Maildir, and the key ring lives where the system config says.
    lmtp_next: str = ""
    keys_file: Path | None = None
    web_url: str = ""
    web_rate_limit: int = 30
    web_trusted_proxies: int = 1
    # The digest of held mail: where it goes ("" = the owner's address) and how often
    # `crtool serve` sends one (0 = never; cron can run `crtool digest` instead).
    digest_to: str = ""
    digest_every: int = 86400
    # Bytes; a longer stream is a broken environment, not a message (envelope.RawMessage).
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    subaddress_separators: str = "+"
    name: str = ""  # the owner's name, shown in the challenge's From (else the address)
    challenge_excerpt_lines: int = 0  # lines of the held message's body a challenge quotes
    # How long a reply to mail the owner sent through `crtool sendmail` is delivered unasked.
    reply_window: int = 180 * 86400
    # A delivery that found no server starts `crtool serve`, which exits after this long
    # without a delivery (autostart.py); 0 never starts one.
    serve_idle: int = 600
    # The header the owner's own spam filter adds to spam ("X-Spam-Flag: YES"); "" for none.
    spam_header: str = ""
    mode: str = "enforce"

    def __post_init__(self) -> None:
        if self.hold_ttl <= 0:
            object.__setattr__(self, "hold_ttl", self.confirm_ttl)

    @property
    def keys_path(self) -> Path:
        return self.keys_file if self.keys_file is not None else self.home / KEYS_NAME

    @property
    def templates_dir(self) -> Path:
        return self.home / "templates"

    @property
    def owner(self) -> str:
        """The owner key every row carries: the base address, lowercased."""
        return self.address.lower()

    @property
    def owner_address(self) -> OwnerAddress:
        """The owner's address as policy and delivery compare mail with it."""
        from crtool.addresses import OwnerAddress

        return OwnerAddress(self.address, self.delimiter)

    def web_link(self, path: str) -> str:
        """The outside URL of a page of `crtool web` ("c/TOKEN", "login/TOKEN"), or "" when
        `web_url` is not set and there is no web page to link to."""
        if not self.web_url:
            return ""
        return self.web_url.rstrip("/") + "/" + path.lstrip("/")


_DURATIONS = {"confirm_ttl", "hold_ttl", "challenge_window", "sendmail_timeout",
              "database_timeout", "digest_every", "reply_window", "serve_idle"}
_INTEGERS = {"challenge_limit", "challenge_global_limit", "max_message_size",
             "challenge_excerpt_lines", "web_rate_limit", "web_trusted_proxies"}
# A challenge quotes a short excerpt at most, never the message.
MAX_EXCERPT_LINES = 20
_CHOICES = {
    "mta": MTA_PROFILES,
    "delivery": DELIVERY_MODES,
    "blacklist_action": BLACKLIST_ACTIONS,
    "mode": MODES,
}
_STRINGS = {"address", "database_url", "sendmail", "delimiter", "authserv_id",
            "subaddress_separators", "name", "lmtp_next", "web_url", "digest_to",
            "spam_header"}
_WEB_URL = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")


def default_database_url(home: Path) -> str:
    return f"sqlite:///{home / DATABASE_NAME}"


def settings_from_mapping(home: Path, data: dict[str, Any]) -> Settings:
    """Validate a parsed config.toml; ValueError names the first setting that is wrong."""
    known = {f.name for f in fields(Settings)} - {"home", "keys_file"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}")
    if "address" not in data:
        raise ValueError("setting 'address' is missing")
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name in _DURATIONS:
            values[name] = parse_duration(value)
        elif name in _INTEGERS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"setting {name!r} must be a whole number >= 0")
            values[name] = value
        elif name in _CHOICES:
            if value not in _CHOICES[name]:
                raise ValueError(f"setting {name!r} must be one of {', '.join(_CHOICES[name])}")
            values[name] = value
        elif name == "maildir":
            values[name] = Path(str(value)).expanduser()
        elif name in _STRINGS:
            if not isinstance(value, str):
                raise ValueError(f"setting {name!r} must be a string")
            values[name] = value
    if values.get("max_message_size", 1) < 1:
        raise ValueError("setting 'max_message_size' must be at least 1 (bytes)")
    from crtool.addresses import split_address

    local, domain = split_address(values["address"])
    if not local or not domain:
        raise ValueError(f"setting 'address' is not an address: {values['address']!r}")
    delimiter = values.get("delimiter", "-")
    if len(delimiter) != 1 or delimiter.isalnum() or delimiter in "@ \t":
        raise ValueError("setting 'delimiter' must be one punctuation character such as '-'")
    web_url = values.get("web_url", "")
    if web_url and not _WEB_URL.fullmatch(web_url):
        raise ValueError("setting 'web_url' must be an http(s) URL without query, e.g. "
                         "https://mail.example.test/crtool")
    separators = values.get("subaddress_separators", "+")
    if any(c.isalnum() or c.isspace() or c in '@."\\<>=' or not c.isprintable()
           for c in separators):
        raise ValueError("setting 'subaddress_separators' must be punctuation characters "
                         "such as '+' (not '@', '.', '=' or quotes)")
    if values.get("challenge_excerpt_lines", 0) > MAX_EXCERPT_LINES:
        raise ValueError(f"setting 'challenge_excerpt_lines' must be at most {MAX_EXCERPT_LINES}")
    values.setdefault("maildir", Path.home() / "Maildir")
    values.setdefault("database_url", default_database_url(home))
    if "hold_ttl" in values and not 0 < values["hold_ttl"] <= values.get(
            "confirm_ttl", Settings.confirm_ttl):
        # Longer would keep messages whose tokens no longer confirm them.
        raise ValueError("setting 'hold_ttl' must be more than 0s and at most confirm_ttl")
    if values.get("mta", "qmail") != "qmail":
        # A .forward has no "next line": under a sysexits MTA crtool delivers what it accepts.
        values["delivery"] = "maildir"
    return Settings(home=home, **values)


def read_toml(path: Path, missing_hint: str = "") -> dict[str, Any]:
    """A config file's TOML; TemporaryFailure (one line) when missing, unreadable or invalid."""
    import tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise TemporaryFailure(f"config {path} is missing{missing_hint}") from None
    except OSError as error:
        raise TemporaryFailure(f"config {path} is unreadable: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise TemporaryFailure(f"config {path} is not valid TOML: {error}") from None


def load_settings(home: Path) -> Settings:
    """Read HOME/config.toml. Raises TemporaryFailure when it is missing, unreadable or invalid."""
    path = home / CONFIG_NAME
    data = read_toml(path, " (run 'crtool init')")
    try:
        return settings_from_mapping(home, data)
    except ValueError as error:
        raise TemporaryFailure(f"config {path}: {error}") from None


def with_mta(settings: Settings, mta: str | None) -> Settings:
    """The settings with the MTA profile of the command line, which beats the config."""
    if mta is None or mta == settings.mta:
        return settings
    if mta not in MTA_PROFILES:
        raise TemporaryFailure(f"unknown MTA profile {mta[:40]!r}")
    delivery = settings.delivery if mta == "qmail" else "maildir"
    return replace(settings, mta=mta, delivery=delivery)


def resolve_home(cli_home: str | None, environ: os._Environ[str] | dict[str, str]) -> Path:
    """--home, then $CRTOOL_HOME, then ~/.crtool (from $HOME, as qmail and Postfix set it)."""
    from crtool.home import resolve

    return Path(resolve(cli_home, environ))


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def toml_string(value: str) -> str:
    """`value` as a TOML basic string that reads back as exactly `value`: quotes, backslashes
    and every control character escaped, so no value can end its line and start a setting of
    its own. ValueError for text that is not Unicode (undecodable bytes from the command line)."""
    out = []
    for char in value:
        if "\ud800" <= char <= "\udfff":
            raise ValueError(f"not valid UTF-8 text: {value!r}")
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def render_config(settings: Settings) -> str:
    """config.toml text for `init`: every setting written out, commented, so the owner sees them."""

    q = toml_string

    # Written commented out while it equals confirm_ttl, so that it follows confirm_ttl.
    hold = "# " if settings.hold_ttl == settings.confirm_ttl else ""

    return f"""\
# crtool settings. Durations take s, m, h, d or w. See etc/config.toml for every option.
address = {q(settings.address)}
maildir = {q(str(settings.maildir))}
database_url = {q(settings.database_url)}
sendmail = {q(settings.sendmail)}
# qmail (exit 0 lets the next .qmail line deliver) or postfix, exim, sendmail, procmail, dovecot
mta = {q(settings.mta)}
# "continue": qmail's next .qmail line delivers whitelisted mail; "maildir": crtool delivers it
delivery = {q(settings.delivery)}
delimiter = {q(settings.delimiter)}
# "drop" (silently, the default) or "bounce" (exit code for a permanent failure)
blacklist_action = {q(settings.blacklist_action)}
confirm_ttl = "{format_duration(settings.confirm_ttl)}"
# How long a held message is kept (at most confirm_ttl, its default).
{hold}hold_ttl = "{format_duration(settings.hold_ttl)}"
challenge_limit = {settings.challenge_limit}
challenge_window = "{format_duration(settings.challenge_window)}"
challenge_global_limit = {settings.challenge_global_limit}
sendmail_timeout = "{format_duration(settings.sendmail_timeout)}"
# How long a delivery waits for the database lock before the MTA is asked to retry.
database_timeout = "{format_duration(settings.database_timeout)}"
# The authserv-id your own MTA writes in Authentication-Results; empty trusts none.
authserv_id = {q(settings.authserv_id)}
# Where `crtool web` is reached from outside (e.g. "https://mail.example.test/crtool"); when set,
# challenges carry a link to a Confirm page besides the reply address. Empty: no link.
web_url = {q(settings.web_url)}
# Requests a minute that one client address may make to the confirm and login pages.
web_rate_limit = {settings.web_rate_limit}
# How many reverse proxies in front of `crtool web` set X-Forwarded-For/-Proto/-Host/-Prefix
# (0 when it faces clients directly: then those headers are ignored).
web_trusted_proxies = {settings.web_trusted_proxies}
# Bytes. A longer message on stdin is taken for a broken environment (such as /dev/zero) and
# the MTA is asked to retry; raise it if you receive larger mail.
max_message_size = {settings.max_message_size}
# Characters that start a sub-address (bob+news@example.com is bob@example.com); "" for none.
subaddress_separators = {q(settings.subaddress_separators)}
# Your name in the challenge's From ("Alice (confirmation)"); empty shows the address.
name = {q(settings.name)}
# Lines of a held message's body quoted in its challenge (0 to 20); the challenge may go to a
# forged address, so the default quotes none.
challenge_excerpt_lines = {settings.challenge_excerpt_lines}
# The digest of held mail: its recipient ("" for the address above), and how often
# `crtool serve` mails one ("0" never; `crtool digest` from cron works as well).
digest_to = {q(settings.digest_to)}
digest_every = "{format_duration(settings.digest_every)}"
# A reply to mail you sent through `crtool sendmail` is delivered (and its sender whitelisted)
# for this long after you sent it.
reply_window = "{format_duration(settings.reply_window)}"
# After a delivery that found no `crtool serve` running, start one, which exits after this long
# without mail ("0": never start one; deliveries then work alone, more slowly).
serve_idle = "{format_duration(settings.serve_idle)}"
# The header your own spam filter adds to spam, e.g. "X-Spam-Flag: YES" (SpamAssassin) or
# "X-Spam: Yes" (rspamd): a stranger's message so marked is held without a challenge.
spam_header = {q(settings.spam_header)}
# "enforce", or "observe": deliver everything, challenge nobody, record what enforce would
# have done (`crtool report`); `crtool mode` switches.
mode = {q(settings.mode)}
"""
