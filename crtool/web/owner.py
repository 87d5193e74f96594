"""The owner's pages: log in by a one-time link, the held mail by reason, the two lists.

Every change is a POST carrying the session's CSRF field and calls the function the command line
calls (`service.release`, `service.delete_ids`, `service.list_add`, `service.list_remove`);
listings read the store as `pending list` and `whitelist list` do.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from crtool import login, policy, service
from crtool.errors import BadToken, NotFound, UsageError
from crtool.store import lists, log, pending
from crtool.store.engine import transaction
from crtool.store.models import Pending
from crtool.web import chart, state
from crtool.web.guard import CSRF_FIELD, check_session_csrf, limit_rate, prefetched

blueprint = Blueprint("owner", __name__)
PAGE_SIZE = 50
GROUP_SIZE = 10
LIST_NAMES = policy.LIST_COMMANDS
ACTIONS = ("release", "release_whitelist", "delete", "delete_blacklist")


def _owner() -> str:
    return state(current_app).box.owner


@blueprint.before_request
def _logged_in() -> tuple[str, int] | None:
    """Every owner page but the login link needs the session; every POST its CSRF field."""
    if request.endpoint == "owner.login_link":
        return None
    if session.get("owner") != _owner():
        return render_template("login_needed.html"), 401
    if request.method == "POST":
        check_session_csrf(request)
    return None


@blueprint.context_processor
def _common() -> dict[str, Any]:
    return {"csrf_field": CSRF_FIELD, "csrf_value": session.get(CSRF_FIELD, ""),
            "owner": state(current_app).box.settings.address}


# Logging in and out ---------------------------------------------------------------------------

@blueprint.get("/login/<token>")
def login_link(token: str) -> tuple[str, int]:
    """Spend a login link and set the session cookie. A HEAD or a prefetch spends nothing, so
    a browser's speculation or a scanner's HEAD leaves the link usable."""
    web = state(current_app)
    limit_rate(web.limiter, request)
    if prefetched(request):
        return render_template("logged_in.html", done=False), 200
    try:
        login.use(web.box, token)
    except BadToken as error:
        gone = error.reason in ("expired", "used")
        return render_template("login_failed.html", reason=error.reason), 410 if gone else 404
    session.clear()
    session.permanent = True
    session["owner"] = web.box.owner
    session[CSRF_FIELD] = secrets.token_urlsafe(32)
    # A page that moves on by itself rather than a redirect: a SameSite=Strict cookie is not
    # sent on a redirect that a cross-site click (the mail client) started.
    return render_template("logged_in.html", done=True), 200


@blueprint.post("/logout")
def logout() -> Response:
    session.clear()
    return redirect(url_for("owner.queue"), 303)


# Held mail ------------------------------------------------------------------------------------

REASON_TEXT: dict[str, str] = {
    reason: text.replace("`", "") for reason, text in (
        ("challenged", "a challenge went to the sender, who has not confirmed yet"),
        *((rule.reason, rule.trigger) for rule in policy.SUPPRESSION_RULES),
        *policy.RATE_LIMIT_RULES)
}


def _when(epoch: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(epoch or 0))


def _page_number() -> int:
    try:
        return max(1, int(request.args.get("page", "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class Group:
    """Held messages of one reason: its newest few, or one page of them."""

    reason: str
    text: str
    total: int
    rows: list[Pending]


@blueprint.get("/")
def queue() -> str:
    """Held mail grouped by reason (each reason's newest, or one reason page by page), the
    search box, and the chart of the last 30 days."""
    box = state(current_app).box
    search = request.args.get("q", "").strip()[:200]
    reason = request.args.get("reason") or None
    number = _page_number()
    with transaction(box.engine, write=False) as session_:
        counts = pending.reason_counts(session_, box.owner, search)
        groups = []
        shown = [reason] if reason is not None else sorted(counts, key=lambda r: -counts[r])
        for name in shown:
            size = PAGE_SIZE if reason is not None else GROUP_SIZE
            found = pending.page(session_, box.owner, (pending.HELD,), size,
                                 (number - 1) * size if reason is not None else 0,
                                 reason=name, search=search, total=counts.get(name, 0))
            groups.append(Group(name, REASON_TEXT.get(name, ""), found.total, found.rows))
        days = chart.days(box.now())
        daily = log.daily_counts(session_, box.owner, days[0], chart.KINDS)
    pages = 0
    if reason is not None and groups:
        pages = max(1, -(-groups[0].total // PAGE_SIZE))
    return render_template(
        "queue.html", groups=groups, counts=counts, total=sum(counts.values()),
        reason=reason, search=search, page=number, pages=pages, when=_when,
        chart=chart.build(days, daily), actions=ACTIONS,
        query={k: v for k, v in (("reason", reason), ("q", search)) if v})


@blueprint.post("/held")
def act() -> Response:
    """One of the four actions on the messages ticked, or on the one whose button was used."""
    box = state(current_app).box
    chosen = request.form.get("act", "")
    verb, _, one = chosen.partition(":")
    ids = [one] if one else request.form.getlist("id")[:1000]
    back = {k: request.form[k] for k in ("reason", "q") if request.form.get(k)}
    target = url_for("owner.queue") + ("?" + urlencode(back) if back else "")
    if verb not in ACTIONS:
        flash("Choose what to do with the messages.", "error")
        return redirect(target, 303)
    if not ids:
        flash("Tick at least one message first.", "error")
        return redirect(target, 303)
    try:
        if verb.startswith("release"):
            done = service.release(box, ids, whitelist=verb == "release_whitelist")
            what = "Released" + (" and whitelisted the senders of" if "white" in verb else "")
        else:
            done = service.delete_ids(box, ids, blacklist=verb == "delete_blacklist")
            what = "Deleted" + (" and blacklisted the senders of" if "black" in verb else "")
    except NotFound as error:
        flash(f"Nothing was changed: {error} (it was released or deleted meanwhile).", "error")
        return redirect(target, 303)
    flash(f"{what} {len(done)} message{'s' if len(done) != 1 else ''}: {_few(done)}.", "ok")
    return redirect(target, 303)


# The lists --------------------------------------------------------------------------------------

@blueprint.get("/whitelist", defaults={"name": "whitelist"}, endpoint="whitelist")
@blueprint.get("/blacklist", defaults={"name": "blacklist"}, endpoint="blacklist")
def address_list(name: str) -> str:
    box = state(current_app).box
    search = request.args.get("q", "").strip()[:200]
    number = _page_number()
    with transaction(box.engine, write=False) as session_:
        total = lists.count(session_, box.owner, LIST_NAMES[name], search)
        entries = list(lists.entries(session_, box.owner, LIST_NAMES[name], search,
                                     PAGE_SIZE, (number - 1) * PAGE_SIZE))
    return render_template("list.html", name=name, entries=entries, total=total,
                           search=search, page=number, pages=max(1, -(-total // PAGE_SIZE)),
                           when=_when)


def _few(items: list[str], shown: int = 10) -> str:
    """Names for a flash message, which travels in the session cookie: at most `shown`."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(item[:80] for item in items[:shown]) + more


_SEPARATORS = re.compile(r"[\s,;]+")


@blueprint.post("/whitelist/<verb>", defaults={"name": "whitelist"}, endpoint="whitelist_edit")
@blueprint.post("/blacklist/<verb>", defaults={"name": "blacklist"}, endpoint="blacklist_edit")
def edit_list(name: str, verb: str) -> Response:
    box = state(current_app).box
    target = url_for(f"owner.{name}")
    texts = [t for t in _SEPARATORS.split(request.form.get("patterns", "")) if t][:1000]
    if not texts:
        flash("Type an address or a pattern first.", "error")
        return redirect(target, 303)
    try:
        if verb == "add":
            note = " ".join(request.form.get("note", "").split())[:200]
            added = service.list_add(box, LIST_NAMES[name], texts, note or "added on the web")
            flash(f"Added to the {name}: {_few([t for t, new in added if new]) or 'nothing new'}.",
                  "ok")
        elif verb == "remove":
            removed, missing = service.list_remove(box, LIST_NAMES[name], texts)
            flash(f"Removed from the {name}: {_few(removed) or 'nothing'}"
                  + (f"; not listed: {_few(missing)}" if missing else "") + ".",
                  "ok" if removed else "error")
        else:
            flash("Unknown change.", "error")
    except UsageError as error:
        flash(f"Nothing was changed: {error}.", "error")
    return redirect(target, 303)
