"""The files through which the MTA runs crtool: `~/.qmail` and `~/.qmail-default` for qmail,
`~/.forward` for Postfix and Sendmail (Exim is set up with a router, procmail and Dovecot in
files of their own). `init` prints or installs them; `doctor` checks them.

Why this matters enough for a module: qmail reads a line that starts with a space as an address
to forward to, so a line pasted with the indentation of a printed example forwards every message
to a bad address and bounces it. qmail runs the lines in order and treats a failure on any line as
a failure of the whole file, so crtool must be the first line; it runs the line with a minimal
PATH, so crtool is named by its absolute path. Under Postfix every line of `.forward` delivers on
its own, so any line besides crtool's would deliver mail crtool never saw.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import sys
import time
from pathlib import Path

from crtool.config import Settings
from crtool.errors import UsageError

QMAIL_FILES = (".qmail", ".qmail-default")
FORWARD_FILE = ".forward"
FORWARD_MTAS = ("postfix", "sendmail")
_WHAT_QMAIL_FILE_GOVERNS = {
    ".qmail": "the bare address",
    ".qmail-default": "every extension, confirm addresses included",
}


def user_home() -> Path:
    """The user's home directory, where the MTA looks for the files: $HOME, as qmail-local and
    Postfix's local(8) set it."""
    return Path(os.environ.get("HOME") or str(Path.home()))


def crtool_argv() -> list[str]:
    """This crtool as the words of a command, by absolute path: qmail runs the line with
    PATH=/var/qmail/bin:/usr/local/bin:/usr/bin:/bin."""
    script = Path(sys.executable).parent / "crtool"
    if script.exists():
        return [str(script)]
    found = shutil.which("crtool")
    return [str(Path(found).resolve())] if found else [sys.executable, "-m", "crtool"]


def deliver_command(settings: Settings) -> str:
    """The shell command the MTA runs: crtool, `--home` unless HOME is ~/.crtool, `deliver`,
    and `--mta` under a profile other than qmail. UsageError for a path with a line break,
    which no line of these files can hold."""
    words = crtool_argv()
    if settings.home != user_home() / ".crtool":
        words += ["--home", str(settings.home)]
    words.append("deliver")
    if settings.mta != "qmail":
        words += ["--mta", settings.mta]
    if any(c in word for word in words for c in "\r\n\0"):
        raise UsageError("a path with a line break cannot go into a .qmail or .forward line")
    return " ".join(shlex.quote(word) for word in words)


def maildir_line(settings: Settings) -> str:
    """The Maildir as a dot-qmail delivery line: `./Maildir/` inside the home directory."""
    try:
        return "./" + str(settings.maildir.relative_to(user_home())).rstrip("/") + "/"
    except ValueError:
        return str(settings.maildir).rstrip("/") + "/"


def qmail_lines(settings: Settings) -> list[str]:
    return [f"|{deliver_command(settings)}", maildir_line(settings)]


def forward_line(settings: Settings) -> str:
    return f'"|{deliver_command(settings)}"'


def crtool_words(line: str) -> list[str] | None:
    """The words of a program line (`|…`, or `"|…"` in a .forward) that runs `crtool …
    deliver`, whatever its indentation; None for any other line."""
    text = line.strip()
    if text.startswith('"') and text.endswith('"') and len(text) > 1:
        text = text[1:-1]
    if not text.startswith("|"):
        return None
    try:
        words = shlex.split(text[1:])
    except ValueError:
        return None
    if "deliver" not in words:
        return None
    before = words[:words.index("deliver")]
    named = any(Path(word).name == "crtool" for word in before) or (
        "-m" in before and "crtool" in before)
    return words if named else None


def _delivers(line: str) -> bool:
    """A line of a dot-qmail file that delivers somewhere (not blank, not a comment)."""
    return bool(line.strip()) and not line.startswith("#")


def merged_qmail(existing: str | None, ours: list[str]) -> str:
    """A dot-qmail file that runs crtool first and then whatever delivered before: crtool's
    own old lines (and indented copies of these lines) are dropped, the owner's other lines
    kept in order after crtool's; the Maildir line is added when nothing else delivers."""
    stripped = {line.strip() for line in ours}
    kept = [line for line in (existing or "").splitlines()
            if crtool_words(line) is None and not (line.strip() in stripped
                                                   and line != line.lstrip())]
    if not any(_delivers(line) for line in kept):
        kept = [*ours[1:], *kept]
    return "\n".join([ours[0], *kept]) + "\n"


def _current(path: Path) -> str | None:
    """The text of `path` (through a link only to a file of this user), or None."""
    try:
        owner = os.stat(path).st_uid
    except FileNotFoundError:
        return None
    if owner != os.geteuid():
        raise UsageError(f"{path} belongs to uid {owner}, not to this user ({os.geteuid()})")
    return path.read_text(encoding="utf-8", errors="surrogateescape")


def _install(path: Path, text: str) -> str:
    """Write `text` as `path` (0644), keeping the old file as a backup; one line of report."""
    from crtool.private import replace_file

    old = _current(path)
    if old == text:
        return f"{path}: already in place"
    note = ""
    if old is not None:
        # A dot in the name: qmail turns dots into colons when it looks up an extension's
        # file, so no address can ever select the backup as its .qmail file.
        backup = path.with_name(
            f"{path.name}.crtool-backup-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        replace_file(backup, old.encode("utf-8", "surrogateescape"), 0o600)
        note = f" (the old one is in {backup.name})"
    replace_file(path, text.encode("utf-8", "surrogateescape"), 0o644)
    return f"{path}: written{note}"


def install(settings: Settings) -> list[str]:
    """Install the lines for the configured MTA in the user's home directory; one report line
    per file. UsageError for a profile whose set-up is not a file in the home directory."""
    home = user_home()
    if settings.mta == "qmail":
        ours = qmail_lines(settings)
        return [_install(home / name, merged_qmail(_current(home / name), ours))
                for name in QMAIL_FILES]
    if settings.mta in FORWARD_MTAS:
        report = _install(home / FORWARD_FILE, forward_line(settings) + "\n")
        if "(the old one" in report:
            report += ("; its lines were not kept: each line of a .forward delivers on its "
                       "own, around crtool")
        return [report]
    raise UsageError(f"--install writes dot-qmail files and .forward; for {settings.mta}, "
                     "add the delivery by hand (see docs/mta-setup.md)")


# doctor -----------------------------------------------------------------------------------

def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_crtool_line(path: Path, number: int, words: list[str],
                       settings: Settings) -> list[str]:
    """The crtool line runs this crtool, by absolute path, for this HOME and profile."""
    where = f"{path} line {number}"
    found = []
    program, mine = words[0], crtool_argv()
    if not os.path.isabs(program):
        found.append(f"{where} names {program} without an absolute path; the MTA's PATH "
                     f"may not find it: write {mine[0]}")
    elif not (_same_file(program, mine[0]) or (program == mine[0] and words[1:3] == mine[1:3])):
        found.append(f"{where} runs {program}, not this crtool ({mine[0]})")
    home = user_home() / ".crtool"
    if "--home" in words[:words.index("deliver")]:
        home = Path(os.path.expanduser(words[words.index("--home") + 1]))
    if home.absolute() != settings.home:
        found.append(f"{where} delivers with HOME {home}, not {settings.home}")
    after = words[words.index("deliver") + 1:]
    mta = after[after.index("--mta") + 1] if "--mta" in after[:-1] else "qmail"
    if mta != settings.mta:
        found.append(f"{where} uses the {mta} profile, but the config says {settings.mta}")
    return found


def _check_file(path: Path, settings: Settings, missing: str) -> list[str]:
    try:
        info = os.stat(path)
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return [f"{path} is missing: {missing}"]
    except OSError as error:
        return [f"{path} cannot be read: {error.strerror}"]
    found = []
    if info.st_mode & stat.S_IWOTH:
        found.append(f"{path} is writable by everyone: the MTA refuses it; chmod o-w it")
    instructions = [(n, line) for n, line in enumerate(lines, 1) if _delivers(line)]
    for number, line in instructions:
        if line != line.lstrip():
            found.append(f"{path} line {number} is indented: the MTA reads {line.strip()!r} "
                         "as an address to forward to; start it at column 0")
    if not instructions or crtool_words(instructions[0][1]) is None \
            or instructions[0][1] != instructions[0][1].lstrip():
        first = repr(instructions[0][1]) if instructions else "nothing"
        found.append(f"{path} does not run crtool first (its first line is {first}); "
                     "run 'crtool init --install'")
        return found
    number, line = instructions[0]
    found += _check_crtool_line(path, number, crtool_words(line) or [], settings)
    if settings.mta == "qmail" and settings.delivery == "continue" and len(instructions) < 2:
        found.append(f"{path} has no line after crtool's to deliver whitelisted mail")
    if settings.mta != "qmail":
        for number, _line in instructions[1:]:
            found.append(f"{path} line {number} delivers on its own, around crtool")
    return found


def problems(settings: Settings) -> list[str]:
    """What in the user's home directory keeps the MTA from running this crtool first."""
    home = user_home()
    found = []
    if settings.mta == "qmail":
        try:
            mode = os.stat(home).st_mode
        except OSError:
            mode = 0
        if mode & (stat.S_IWGRP | stat.S_IWOTH | stat.S_ISVTX):
            found.append(f"home directory {home} has mode {stat.S_IMODE(mode):o}: qmail "
                         "defers all mail to a group- or world-writable home; chmod go-w it")
        for name in QMAIL_FILES:
            found += _check_file(home / name, settings,
                                 f"qmail delivers {_WHAT_QMAIL_FILE_GOVERNS[name]} without "
                                 "crtool; run 'crtool init --install'")
    elif settings.mta in FORWARD_MTAS:
        found += _check_file(home / FORWARD_FILE, settings,
                             f"{settings.mta} delivers without crtool unless a pipe in its "
                             "own configuration runs it; run 'crtool init --install'")
    return found
