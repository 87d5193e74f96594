"""The web pages: a Flask application over the same mailbox and service functions as `deliver`.

Two blueprints: `sender` (the page a challenged stranger opens: GET shows, POST confirms) and
`owner` (a one-time login link, the held mail, the lists, a chart). Neither decides anything: each
view reads the store or calls one `service` function and renders what came back. What lives here
is HTTP's own business: sessions, CSRF fields, security headers, a rate limit per client address,
and the forwarded scheme, host and prefix of the owner's reverse proxy (`web_trusted_proxies`).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from typing import Any

from flask import Flask, render_template
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from crtool.resources import shipped_dir
from crtool.service import Mailbox
from crtool.web.guard import RateLimiter, security_headers

SESSION_HOURS = 12
EXTENSION = "crtool"


def create_app(box: Mailbox) -> Flask:
    """The WSGI application for one owner's mailbox. The key ring is read now: a broken one
    stops `crtool web` at once rather than failing every request."""
    pages = shipped_dir("templates") / "web"
    app = Flask("crtool.web", template_folder=str(pages),
                static_folder=str(pages / "static"), static_url_path="/static")
    keys = box.keys()
    # The session cookie is signed with keys derived from the ring, newest first; after
    # `keys rotate` a restart signs with the new key and still reads cookies of the old one.
    app.secret_key = _session_key(keys[-1])
    app.config.update(
        SECRET_KEY_FALLBACKS=[_session_key(key) for key in reversed(keys[:-1])],
        SESSION_COOKIE_NAME="crtool_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=box.settings.web_url.startswith("https:"),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        MAX_CONTENT_LENGTH=256 * 1024,
    )
    app.extensions[EXTENSION] = WebState(
        box, RateLimiter(box.settings.web_rate_limit, 60, box.clock))

    from crtool.web import owner, sender

    app.register_blueprint(sender.blueprint)
    app.register_blueprint(owner.blueprint)
    app.after_request(security_headers)
    app.register_error_handler(HTTPException, _error_page)

    @app.get("/hello")
    def hello() -> str:
        """A bare route, for the health check of a supervisor and as the bench's baseline."""
        return "hello"

    trusted = box.settings.web_trusted_proxies
    if trusted:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=trusted, x_proto=trusted, x_host=trusted, x_prefix=trusted)
    return app


class WebState:
    """What every view needs: the owner's mailbox and the per-address rate limit."""

    def __init__(self, box: Mailbox, limiter: RateLimiter) -> None:
        self.box = box
        self.limiter = limiter


def state(app: Any) -> WebState:
    found: WebState = app.extensions[EXTENSION]
    return found


def _session_key(key: bytes) -> bytes:
    return hmac.new(key, b"crtool.web.session", hashlib.sha256).digest()


def _error_page(error: HTTPException) -> Response:
    code = error.code or 500
    response = error.get_response()
    page = render_template("error.html", code=code, title=error.name,
                           text=error.description or "")
    response.set_data(page)
    response.content_type = "text/html; charset=utf-8"
    return response
