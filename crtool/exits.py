"""Every exit code crtool speaks, in one place (contract §2): a delivery's Outcome per MTA
profile, with its one stderr line, and the codes of the other commands."""

from __future__ import annotations

import enum

from crtool.profiles import MTA_PROFILES

# The commands other than `deliver`.
EXIT_OK = 0
EXIT_NOT_LISTED = 1  # `check`, `whitelist check`: the sender is on no list
EXIT_NOT_ACCEPTED = 1  # `address check`: mail to that address would not pass unasked
EXIT_NOTHING_READ = 1  # `learn`, `simulate`: not one source could be read
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_ENVIRONMENT = 4
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it
# sysexits.h EX_TEMPFAIL: a retry under qmail and Postfix alike (qmail's 111 would bounce under
# Postfix), so the code of a delivery broken before its profile is known.
EX_TEMPFAIL = 75
# The profile of such a delivery: the sysexits codes, whichever MTA it turns out to be.
GUESSED = "sysexits"


class Outcome(enum.Enum):
    CONTINUE = "continue"  # whitelisted: qmail's next .qmail line delivers
    DELIVERED = "delivered"  # crtool wrote it into the Maildir
    HELD = "held"
    DROPPED = "dropped"
    CONFIRMED = "confirmed"
    BOUNCED = "bounced"
    TEMPFAIL = "tempfail"


_QMAIL = {
    Outcome.CONTINUE: 0,
    Outcome.DELIVERED: 99,
    Outcome.HELD: 99,
    Outcome.DROPPED: 99,
    Outcome.CONFIRMED: 99,
    Outcome.BOUNCED: 100,
    Outcome.TEMPFAIL: 111,
}
# sysexits.h: EX_NOPERM 77 bounces with 5.7.0; EX_TEMPFAIL 75 defers. Postfix bounces on
# any other non-zero code, 99 and 111 included, so those never appear here.
_SYSEXITS = {
    Outcome.CONTINUE: 0,
    Outcome.DELIVERED: 0,
    Outcome.HELD: 0,
    Outcome.DROPPED: 0,
    Outcome.CONFIRMED: 0,
    Outcome.BOUNCED: 77,
    Outcome.TEMPFAIL: EX_TEMPFAIL,
}
_STATUS = {Outcome.TEMPFAIL: "4.3.0", Outcome.BOUNCED: "5.7.1"}

EXIT_CODES_HELP = """\
exit codes of 'deliver':
  qmail profile (default):  0 whitelisted, the next .qmail line delivers;
                            99 handled (held, delivered, dropped or confirmed);
                            100 bounce (only where blacklist_action = "bounce");
                            111 temporary failure, qmail retries
  sysexits profile (--mta postfix, exim, sendmail, procmail, dovecot):
                            0 handled; 77 bounce; 75 temporary failure
exit codes of the other commands:
  0 success; 1 'check': not listed; 2 usage error; 3 not found; 4 the environment is broken"""


def is_qmail(mta: str) -> bool:
    return mta == "qmail"


def code(outcome: Outcome, mta: str) -> int:
    """The exit code of `outcome` under profile `mta`; ValueError for a profile crtool does not
    know (config.py and the command line refuse one before a delivery gets here)."""
    if is_qmail(mta):
        return _QMAIL[outcome]
    if mta in MTA_PROFILES or mta == GUESSED:
        return _SYSEXITS[outcome]
    raise ValueError(f"unknown MTA profile {mta[:40]!r}")


def stderr_line(outcome: Outcome, mta: str, detail: str) -> str | None:
    """The one line to write, or None: every non-zero exit says why, and under a sysexits
    MTA a failure starts with its enhanced status code so the DSN is right."""
    if code(outcome, mta) == 0:
        return None
    detail = " ".join(detail.split())
    if not is_qmail(mta) and outcome in _STATUS:
        return f"{_STATUS[outcome]} crtool: {detail}"
    return f"crtool: {detail}"
