"""crtool(1), written from the argparse parser itself, so the man page cannot drift from
`--help`: every command, its description and every option with its help text.

`make man` writes man/crtool.1 with `python -m crtool.manpage`; the wheel installs that file as
share/man/man1/crtool.1; tests/unit/test_manpage.py proves the file equals what the parser
gives now. argparse has no public way to walk a parser's arguments, so this reads its
`_actions` list, the one place argparse keeps them (argparse-manpage and sphinx-argparse do
the same).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from crtool.exits import EXIT_CODES_HELP

MAN_PATH = Path("man") / "crtool.1"


def _roff(text: str) -> str:
    """Text safe for roff: backslashes and hyphens escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in text.splitlines())


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return list(parser._actions)  # noqa: SLF001 - see the module docstring


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """(command words, parser, one-line help) for every command and verb, depth first."""
    for action in _actions(parser):
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}  # noqa: SLF001
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name, "")
                yield from _commands(sub, (*path, name))


def invocation(action: argparse.Action) -> str:
    """How an argument is written: `--limit N`, `-h, --help`, `PATTERN`."""
    if not action.option_strings:
        return str(action.metavar or action.dest)
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or action.dest.upper()
    if action.choices is not None and action.metavar is None:
        metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
    return ", ".join(f"{option} {metavar}" for option in action.option_strings)


def _arguments(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in _actions(parser):
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):  # noqa: SLF001
            continue
        yield ".TP"
        yield f"\\fB{_roff(invocation(action))}\\fR"
        yield _roff(action.help or "")


def usage(parser: argparse.ArgumentParser) -> str:
    """The usage line on one line, whatever the terminal's width (argparse would wrap it at
    $COLUMNS, and the page must not depend on where it was made)."""
    formatter = argparse.HelpFormatter(prog=parser.prog, width=100_000)
    formatter.add_usage(parser.usage, _actions(parser),
                        parser._mutually_exclusive_groups, prefix="")  # noqa: SLF001
    return " ".join(formatter.format_help().split())


def render(parser: argparse.ArgumentParser) -> str:
    """The whole man page text."""
    lines = [
        '.TH CRTOOL 1 "" "crtool" "User Commands"',
        ".SH NAME",
        "crtool \\- " + _roff(parser.description or ""),
        ".SH SYNOPSIS",
        f"\\fBcrtool\\fR {_roff(usage(parser).split(' ', 1)[1])}",
        ".SH OPTIONS",
        *_arguments(parser),
        ".SH COMMANDS",
    ]
    for words, sub, summary in _commands(parser):
        has_verbs = any(isinstance(a, argparse._SubParsersAction)  # noqa: SLF001
                        for a in _actions(sub))
        lines.append(f'.SS "crtool {" ".join(words)}"')
        lines += [".nf", _roff(usage(sub)), ".fi"]
        lines.append(_roff(sub.description or summary or ""))
        if sub.epilog and not has_verbs:
            lines += [".PP", ".nf", _roff(sub.epilog.rstrip()), ".fi"]
        arguments = list(_arguments(sub))
        if arguments and not has_verbs:
            lines += arguments
        elif has_verbs:
            lines += [".PP", "Verbs: " + _roff(", ".join(
                name for name, _sub, _help in _direct_verbs(sub))) + "."]
    lines += [".SH EXIT STATUS", ".nf", _roff(EXIT_CODES_HELP.rstrip()), ".fi",
              ".SH EXAMPLES", ".nf", _roff(_examples(parser)), ".fi",
              ".SH FILES",
              ".TP", "\\fI~/.crtool/config.toml\\fR", "the settings (etc/config.toml in the "
              "source documents each)",
              ".TP", "\\fI~/.crtool/keys\\fR", "the signing key ring (0600)",
              ".TP", "\\fI~/.crtool/crtool.db\\fR", "the SQLite database (default "
              "database_url)",
              ".TP", "\\fI~/.crtool/templates/\\fR",
              "the owner's own challenge.txt, digest.txt and digest.html",
              ".SH SEE ALSO", "qmail\\-command(8), postconf(5), mutt(1)", ""]
    return "\n".join(lines)


def _direct_verbs(parser: argparse.ArgumentParser
                  ) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    for action in _actions(parser):
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                yield name, sub, ""


def _examples(parser: argparse.ArgumentParser) -> str:
    epilog = parser.epilog or ""
    match = re.search(r"examples:\n(.*?)(\n\n|\Z)", epilog, re.DOTALL)
    return "\n".join(line.strip() for line in (match.group(1) if match else "").splitlines())


def main(argv: list[str] | None = None) -> int:
    """`python -m crtool.manpage [FILE]`: write the man page (default man/crtool.1)."""
    from crtool.cli import build_parser

    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else MAN_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(build_parser()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
