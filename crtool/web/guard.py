"""HTTP's own defences for the web pages: a rate limit per client address, CSRF fields,
security headers, and telling a person's request from a link scanner's or a browser's prefetch.
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
from collections.abc import Callable

from flask import Request, Response, abort, session

# Entries kept before old windows are swept: a flood from many addresses stays bounded.
MAX_TRACKED = 50_000
CSRF_FIELD = "csrf"


class RateLimiter:
    """At most `limit` requests per `window` seconds from one client address (fixed windows).

    It lives in the web process (waitress serves it with threads, hence the lock), so it counts
    per process: one `crtool web` per owner, behind one proxy, is the shape it is meant for.
    `limit` 0 turns it off.
    """

    def __init__(self, limit: int, window: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._counts: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int | None:
        """Count one request from `client`; seconds until it may try again, or None if it
        may go on now."""
        if self.limit <= 0:
            return None
        now = self.clock()
        current = int(now // self.window)
        with self._lock:
            if len(self._counts) >= MAX_TRACKED:
                self._counts = {k: v for k, v in self._counts.items() if v[0] == current}
            window, count = self._counts.get(client, (current, 0))
            if window != current:
                count = 0
            count += 1
            self._counts[client] = (current, count)
        if count <= self.limit:
            return None
        return max(1, math.ceil((current + 1) * self.window - now))


def prefetched(request: Request) -> bool:
    """A HEAD, or a browser's speculative fetch: nothing a person asked to happen."""
    purpose = (request.headers.get("Sec-Purpose", "") + " "
               + request.headers.get("Purpose", "") + " "
               + request.headers.get("X-Moz", "")).lower()
    return request.method == "HEAD" or "prefetch" in purpose or "prerender" in purpose


def cross_site(request: Request) -> bool:
    """A form posted from another site (browsers say so in Sec-Fetch-Site)."""
    return request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site"


def session_csrf() -> str:
    """The owner's CSRF value, made at login and kept in the signed session cookie."""
    value = session.get(CSRF_FIELD)
    if not isinstance(value, str) or not value:
        value = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = value
    return value


def check_session_csrf(request: Request) -> None:
    """400 unless the form carries the session's CSRF value (and came from this site)."""
    expected = session.get(CSRF_FIELD)
    given = request.form.get(CSRF_FIELD, "")
    if cross_site(request) or not isinstance(expected, str) or not expected \
            or not hmac.compare_digest(expected.encode(), given.encode()):
        abort(400, "This form is out of date or did not come from this page. Go back, reload "
                   "the page and try again.")


CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def security_headers(response: Response) -> Response:
    """No scripts, no framing, no sniffing, no referrer (a token is in the URL), no caching
    of pages that show held mail or tokens."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response


def limit_rate(limiter: RateLimiter, request: Request) -> None:
    """429 with Retry-After once this client address has used its requests of the minute."""
    from werkzeug.exceptions import TooManyRequests

    wait = limiter.retry_after(request.remote_addr or "unknown")
    if wait is not None:
        raise TooManyRequests("Too many requests from your address. Please wait a minute and "
                              "try again.", retry_after=wait)
