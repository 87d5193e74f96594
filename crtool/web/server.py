"""`crtool web`: the application in waitress, a production WSGI server.

waitress because it is pure Python (no compiler, nothing beyond PyPI's wheel), serves from threads
in this one process (so the rate limit's counts and the SQLite engine are shared, and nothing
forks), and starts from a function call, so `crtool web` is one foreground process for systemd.
It sits behind the owner's HTTPS reverse proxy; the X-Forwarded-* headers that proxy sets are
read by ProxyFix (see `web_trusted_proxies`), so waitress is told not to strip them.
"""

from __future__ import annotations

from crtool.config import Settings
from crtool.errors import UsageError

DEFAULT_LISTEN = "127.0.0.1:8025"
THREADS = 8


def run(settings: Settings, listen: str) -> int:
    """Serve until SIGTERM or SIGINT. Side effects: the listening socket, a log line."""
    import waitress

    from crtool.service import open_mailbox
    from crtool.web import create_app

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--listen wants HOST:PORT, e.g. {DEFAULT_LISTEN}; got {listen!r}")
    app = create_app(open_mailbox(settings))
    waitress.serve(app, host=host.strip("[]"), port=int(port), threads=THREADS,
                   ident="crtool", clear_untrusted_proxy_headers=settings.web_trusted_proxies == 0)
    return 0


def login_link(settings: Settings, base: str) -> str:
    """A fresh one-time login URL under `web_url` (else under `base`)."""
    from crtool import login
    from crtool.service import open_mailbox

    token = login.issue(open_mailbox(settings))
    return settings.web_link(f"login/{token}") or f"{base.rstrip('/')}/login/{token}"
