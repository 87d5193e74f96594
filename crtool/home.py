"""Where crtool's HOME is: --home, then $CRTOOL_HOME, then ~/.crtool (from $HOME, as qmail and
Postfix set it).

Decided with nothing but `os`, because deliver's client path needs HOME (for HOME/crtool.sock)
before it knows whether it needs anything else; config.resolve_home wraps this in a Path.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


def resolve(cli_home: str | None, environ: Mapping[str, str]) -> str:
    """The absolute path of HOME as text."""
    if cli_home:
        return os.path.abspath(os.path.expanduser(cli_home))
    if environ.get("CRTOOL_HOME"):
        return os.path.abspath(os.path.expanduser(environ["CRTOOL_HOME"]))
    base = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(base, ".crtool")
