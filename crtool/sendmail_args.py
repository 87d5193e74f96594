"""The command line of sendmail(1), read the way Postfix's sendmail reads it.

`crtool sendmail` passes its arguments to the real sendmail unchanged; it only needs to know
whether they send a message (and not list the queue, start an SMTP dialogue on stdin or
rebuild aliases), whether the recipients come from the headers (`-t`), and which arguments are
recipients. It reads them as Postfix's sendmail does (getopt with the option string
"A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx", stopping at the first word that is no
option, `-q` alone taken apart), so what it whitelists is exactly what the MTA sends to. An
option letter it does not know is taken for a flag and passed on: the real sendmail (Postfix's,
qmail's, Exim's) decides what it means.

Pure: no files, no processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# The option letters of Postfix's sendmail that take a value (attached, or the next word).
VALUED = frozenset("ABCFLNORVXbefhopqr")
# -b modes that read and send a message; every other one (-bd, -bh, -bi, -bp, -bs, -bv ...)
# is run as it is, with nothing read or recorded.
SENDING_MODES = frozenset("m")


@dataclass(frozen=True)
class Invocation:
    """What one sendmail command line asks for."""

    sends: bool  # a message on stdin, to be sent
    extract: bool = False  # -t: recipients from To, Cc, Bcc (Resent-* when present)
    ignore_dots: bool = False  # -i or -oi: a line of one "." does not end the message
    sender: str | None = None  # -f or -r
    recipients: tuple[str, ...] = field(default_factory=tuple)
    # Why the command line is not one that sends (a mode, or a usage error): "" when it sends.
    why_not: str = ""


def parse(argv: Sequence[str]) -> Invocation:
    """Read a sendmail command line (without the program name)."""
    words = list(argv)
    sends, why_not = True, ""
    extract = ignore_dots = False
    sender: str | None = None
    position = 0

    def stop(reason: str) -> None:
        nonlocal sends, why_not
        if sends:
            sends, why_not = False, reason

    while position < len(words):
        word = words[position]
        if word == "-q":  # not getopt compatible: a queue run
            stop("-q runs the queue")
            position += 1
            continue
        if word == "-V" and position + 1 < len(words) and len(words[position + 1]) == 2:
            word = "-XV"
        elif word.startswith("-V") and len(word) == 4:
            word = "-X" + word[1:]
        if word == "-XV":
            position += 1
            continue
        if word == "--":
            position += 1
            break
        if not word.startswith("-") or word == "-":
            break
        position += 1
        index = 1
        while index < len(word):
            letter = word[index]
            if letter not in VALUED:
                if letter == "t":
                    extract = True
                elif letter == "i":
                    ignore_dots = True
                elif letter in "In":
                    stop(f"-{letter} sends nothing")
                index += 1
                continue
            value = word[index + 1:]
            if not value:
                if position >= len(words):
                    stop(f"-{letter} needs a value")
                    break
                value = words[position]
                position += 1
            if letter == "b":
                if value[:1] not in SENDING_MODES:
                    stop(f"-b{value[:1]} sends nothing")
            elif letter == "q":
                stop(f"-q{value[:1]} runs the queue")
            elif letter in "fr":
                sender = value
            elif letter == "o" and value.startswith("i"):
                ignore_dots = True
            break
    recipients = tuple(words[position:])
    if extract and not sends:
        extract = False
    return Invocation(sends=sends, extract=extract, ignore_dots=ignore_dots, sender=sender,
                      recipients=recipients if sends else (), why_not=why_not)
