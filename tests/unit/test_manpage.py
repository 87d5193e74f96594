"""--help documents every option, and crtool(1) is exactly what the parser says now."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from crtool import manpage
from crtool.cli import build_parser
from tests.support import REPO


def _parsers(parser: argparse.ArgumentParser, path: str = "crtool",
             ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for words, sub, _ in manpage._commands(parser):
        yield "crtool " + " ".join(words), sub


def test_every_option_and_argument_has_help() -> None:
    missing = [f"{path}: {manpage.invocation(action)}"
               for path, parser in _parsers(build_parser())
               for action in manpage._actions(parser)
               if not isinstance(action, argparse._SubParsersAction) and not action.help]
    assert missing == []


def test_every_command_has_a_one_line_help() -> None:
    missing = [" ".join(words) for words, _, summary in manpage._commands(build_parser())
               if not summary]
    assert missing == []


def test_the_shipped_man_page_is_what_the_parser_says() -> None:
    """`make man` regenerates it; a parser change without it fails here."""
    shipped = (REPO / manpage.MAN_PATH).read_text(encoding="utf-8")
    assert shipped == manpage.render(build_parser())


def test_the_man_page_names_every_option() -> None:
    page = manpage.render(build_parser())
    for path, parser in _parsers(build_parser()):
        for action in manpage._actions(parser):
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option.replace("-", "\\-") in page, (path, option)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_reads_it_without_a_warning() -> None:
    result = subprocess.run(["groff", "-man", "-ww", "-z", str(REPO / manpage.MAN_PATH)],
                            capture_output=True, check=False)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
