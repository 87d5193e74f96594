"""The page a challenged sender opens: `GET /c/<token>` shows, `POST /c/<token>` confirms.

A GET (or HEAD, or a prefetch) changes nothing, because the link scanners of mail gateways fetch
every link in a message. The POST must carry the form's field, a MAC of the token (purpose `web`),
so only the page's own button confirms; it then calls `service.confirm`, exactly as a reply to
the confirm address does, and says what happened.
"""

from __future__ import annotations

import time

from flask import Blueprint, current_app, render_template, request

from crtool import service, tokens
from crtool.exits import Outcome
from crtool.web import state
from crtool.web.guard import cross_site, limit_rate

blueprint = Blueprint("sender", __name__)
FORM_FIELD = "confirm"


@blueprint.before_request
def _rate_limit() -> None:
    limit_rate(state(current_app).limiter, request)


def _when(epoch: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch or 0))


@blueprint.get("/c/<token>")
def show(token: str) -> tuple[str, int]:
    """The held message's summary and one Confirm button; nothing changes."""
    box = state(current_app).box
    found = service.preview(box, token)
    owner = box.settings.address
    if found.state == "invalid" or found.row is None:
        return render_template("sender_result.html", owner=owner, outcome="invalid"), 404
    if found.state == "used":
        return render_template("sender_result.html", owner=owner, outcome="used"), 410
    form_value = tokens.sign_text(box.keys(), "web", token)
    page = render_template(
        "confirm.html", owner=owner, name=box.settings.name, row=found.row,
        received=_when(found.row.received_at),
        expires=_when((found.row.challenged_at or 0) + box.settings.confirm_ttl),
        expired=found.state == "expired", field=FORM_FIELD, form_value=form_value)
    return page, 410 if found.state == "expired" else 200


@blueprint.post("/c/<token>")
def press(token: str) -> tuple[str, int]:
    """The Confirm button: `service.confirm`, as a reply would, then what became of it."""
    box = state(current_app).box
    owner = box.settings.address
    given = request.form.get(FORM_FIELD, "")
    if cross_site(request) or not given or not tokens.check_text(box.keys(), "web", token,
                                                                  given):
        return render_template("sender_result.html", owner=owner, outcome="no_form"), 400
    result = service.confirm(box, token, service.Via.web())
    outcome, status = _page_for(result)
    return render_template("sender_result.html", owner=owner, outcome=outcome), status


def _page_for(result: service.Result) -> tuple[str, int]:
    """Which page, with which status, for what `confirm` did."""
    if result.outcome is Outcome.CONFIRMED:
        return "confirmed", 200
    reason = result.reason
    if reason == "token_expired":
        return "expired", 410
    if reason in ("token_used", "message_gone"):
        return "used", 410
    if reason == "confirm_blacklisted":
        return "refused", 403
    return "invalid", 404
