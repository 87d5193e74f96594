"""The owner's pages through Flask's test client: the one-time login link, the session cookie,
CSRF on every change, the held mail by reason with search, the four actions, the lists, the
chart. Each change is checked through the command line, which reads the same store."""

from __future__ import annotations

import re
import time

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from crtool import login
from tests.support import message
from tests.web.conftest import STRANGER, WEB_URL, Web, held, listed


def sign_in(web: Web) -> FlaskClient:
    """A client holding the owner's session, from a fresh login link."""
    client = web.client()
    token = login.issue(web.app.extensions["crtool"].box)
    assert client.get(f"/login/{token}").status_code == 200
    return client


def csrf(page: TestResponse) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def test_the_printed_login_link_logs_in_once_with_a_strict_cookie(web: Web) -> None:
    out = web.box.ok("web", "login-link").strip()
    assert re.fullmatch(re.escape(WEB_URL) + r"/login/[a-z2-7]{24}", out), out
    path = out[len(WEB_URL):]
    client = web.client()
    page = client.get(path)
    assert page.status_code == 200
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith("crtool_session=")
    for flag in ("HttpOnly", "SameSite=Strict", "Secure"):
        assert flag in cookie, cookie
    # It moves on by itself (no redirect, which a SameSite=Strict cookie would not survive).
    assert 'http-equiv="refresh"' in page.text
    assert client.get("/").status_code == 200
    again = web.client().get(path)
    assert again.status_code == 410
    assert "used already" in again.text
    assert web.client().get("/").status_code == 401


def test_login_links_expire_after_15_minutes_and_forged_ones_never_work(web: Web) -> None:
    box = web.app.extensions["crtool"].box
    late = login.issue(box)
    web.clock.now += 15 * 60 + 1
    page = web.client().get(f"/login/{late}")
    assert page.status_code == 410
    assert "expired" in page.text
    token = login.issue(box)
    flipped = token[:-1] + ("a" if token[-1] != "a" else "b")
    for bad in (flipped, token[:-2], "a" * 24, token + "a"):
        assert web.client().get(f"/login/{bad}").status_code == 404, bad
    # A HEAD or a prefetch does not spend the link; the person's GET then does.
    client = web.client()
    assert client.head(f"/login/{token}").status_code == 200
    assert client.get(f"/login/{token}", headers={"Sec-Purpose": "prefetch"}).status_code == 200
    assert "Set-Cookie" not in client.get(f"/login/{token}",
                                          headers={"Purpose": "prefetch"}).headers
    assert client.get("/").status_code == 401
    assert client.get(f"/login/{token.upper()}").status_code == 200
    assert client.get("/").status_code == 200


def test_without_the_session_every_owner_page_is_closed(web: Web) -> None:
    web.hold()
    [pending_id] = held(web.box)
    client = web.client()
    for path in ("/", "/whitelist", "/blacklist", "/?q=bob"):
        page = client.get(path)
        assert page.status_code == 401
        assert STRANGER not in page.text
        assert "crtool web login-link" in page.text
    assert client.post("/held", data={"act": f"release:{pending_id}"}).status_code == 401
    assert client.post("/whitelist/add", data={"patterns": "x@y.test"}).status_code == 401
    # A session cookie signed with another key is no session.
    client.set_cookie("crtool_session", "eyJvd25lciI6ImFsaWNlQGV4YW1wbGUudGVzdCJ9.Zz.bad",
                      domain="localhost")
    assert client.get("/").status_code == 401
    assert list(held(web.box)) == [pending_id]
    assert not listed(web.box, "whitelist", "x@y.test")


def test_every_change_needs_the_sessions_csrf_field(web: Web) -> None:
    web.hold()
    [pending_id] = held(web.box)
    client = sign_in(web)
    token = csrf(client.get("/"))
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    attempts = [
        client.post("/held", data={"act": f"release:{pending_id}"}),
        client.post("/held", data={"act": f"release:{pending_id}", "csrf": wrong}),
        client.post("/held", data={"act": f"release:{pending_id}", "csrf": token},
                    headers={"Sec-Fetch-Site": "cross-site"}),
        client.post("/whitelist/add", data={"patterns": "x@y.test"}),
        client.post("/blacklist/remove", data={"patterns": "x@y.test", "csrf": ""}),
        client.post("/logout"),
    ]
    for page in attempts:
        assert page.status_code == 400
        assert "out of date" in page.text
    assert list(held(web.box)) == [pending_id]
    assert web.box.maildir_messages() == []
    assert not listed(web.box, "whitelist", "x@y.test")
    assert client.get("/").status_code == 200


def test_held_mail_is_grouped_by_reason_and_searchable(web: Web) -> None:
    web.hold(subject="Lunch on Friday?")
    shop = web.box.deliver(message("noreply@shop.test", "Your receipt"), "noreply@shop.test")
    assert shop.returncode == 99
    client = sign_in(web)
    page = client.get("/")
    assert page.status_code == 200
    text = page.text
    assert re.search(r"<h2[^>]*>challenged <span", text)
    assert re.search(r"<h2[^>]*>noreply_sender <span", text)
    assert "Lunch on Friday?" in text and "Your receipt" in text
    found = client.get("/?q=RECEIPT").text
    assert "Your receipt" in found and "Lunch on Friday?" not in found
    one = client.get("/?reason=challenged").text
    assert "Lunch on Friday?" in one and "Your receipt" not in one
    assert "No held message matches" in client.get("/?q=%25_nothing").text


def test_release_with_a_click_delivers_and_the_row_is_gone(web: Web) -> None:
    web.hold(subject="Keep me")
    [pending_id] = held(web.box)
    client = sign_in(web)
    page = client.get("/")
    assert f'value="release:{pending_id}"' in page.text
    done = client.post("/held", data={"act": f"release:{pending_id}", "csrf": csrf(page)})
    assert done.status_code == 303
    after = client.get(done.headers["Location"])
    assert f"Released 1 message: {pending_id}" in after.text
    assert pending_id not in after.text.replace(f"message: {pending_id}", "")
    assert held(web.box) == {}
    [delivered] = web.box.maildir_messages()
    assert b"Subject: Keep me" in delivered
    assert not listed(web.box, "whitelist", STRANGER)
    # The same message again: it is gone, nothing changes, the page says so.
    again = client.post("/held", data={"act": f"release:{pending_id}", "csrf": csrf(page)})
    assert "Nothing was changed" in client.get(again.headers["Location"]).text
    assert len(web.box.maildir_messages()) == 1


def test_the_four_actions_on_ticked_messages(web: Web) -> None:
    senders = ["a@one.test", "b@two.test", "c@three.test", "d@four.test"]
    for sender in senders:
        web.hold(sender=sender)
    by_sender = {m["sender"]: i for i, m in held(web.box).items()}
    client = sign_in(web)
    token = csrf(client.get("/"))
    for sender, act in zip(senders, ("release", "release_whitelist", "delete",
                                     "delete_blacklist"), strict=True):
        page = client.post("/held", data={"act": act, "id": [by_sender[sender]],
                                          "csrf": token})
        assert page.status_code == 303
    assert held(web.box) == {}
    assert len(web.box.maildir_messages()) == 2
    assert not listed(web.box, "whitelist", "a@one.test")
    assert listed(web.box, "whitelist", "b@two.test")
    assert not listed(web.box, "blacklist", "c@three.test")
    assert listed(web.box, "blacklist", "d@four.test")
    nothing = client.post("/held", data={"act": "release", "csrf": token})
    assert "Tick at least one" in client.get(nothing.headers["Location"]).text


def test_the_lists_add_and_remove(web: Web) -> None:
    client = sign_in(web)
    token = csrf(client.get("/whitelist"))
    added = client.post("/whitelist/add", data={"patterns": "dave@x.test, @example.org",
                                                "note": "<b>friends</b>", "csrf": token})
    assert added.status_code == 303
    page = client.get("/whitelist")
    assert "dave@x.test" in page.text and "@example.org" in page.text
    assert "&lt;b&gt;friends&lt;/b&gt;" in page.text
    assert listed(web.box, "whitelist", "anyone@example.org")
    assert "dave@x.test" in client.get("/whitelist?q=DAVE").text
    assert "dave@x.test" not in client.get("/whitelist?q=example").text
    bad = client.post("/whitelist/add", data={"patterns": "ok@x.test <script>@x",
                                              "csrf": token})
    assert "Nothing was changed" in client.get(bad.headers["Location"]).text
    assert not listed(web.box, "whitelist", "ok@x.test")
    removed = client.post("/whitelist/remove", data={"patterns": "dave@x.test",
                                                     "csrf": token})
    assert "Removed from the whitelist: dave@x.test" in client.get(
        removed.headers["Location"]).text
    assert not listed(web.box, "whitelist", "dave@x.test")
    client.post("/blacklist/add", data={"patterns": "spam@x.test", "csrf": token})
    assert listed(web.box, "blacklist", "spam@x.test")
    assert "spam@x.test" in client.get("/blacklist").text


def test_the_chart_counts_the_last_30_days(web: Web) -> None:
    web.hold()
    client = sign_in(web)
    page = client.get("/").text
    assert page.count("<polyline") == 5
    today = time.strftime("%Y-%m-%d", time.gmtime(web.clock.now))
    row = re.search(rf"<th scope=\"row\">{today}</th>((?:<td>\d+</td>)+)", page)
    assert row, page
    held_n, challenged_n = [int(n) for n in re.findall(r"\d+", row.group(1))][:2]
    assert (held_n, challenged_n) == (1, 1)


def test_logging_out_ends_the_session(web: Web) -> None:
    client = sign_in(web)
    token = csrf(client.get("/"))
    assert client.post("/logout", data={"csrf": token}).status_code == 303
    assert client.get("/").status_code == 401


def test_web_command_help_and_a_bad_listen_address(web: Web) -> None:
    helped = web.box.run("web", "--help")
    assert helped.returncode == 0
    assert b"login-link" in helped.stdout and b"web_trusted_proxies" in helped.stdout
    bad = web.box.run("web", "--listen", "nowhere")
    assert bad.returncode == 2
    assert bad.stderr.decode().startswith("crtool: error: --listen wants HOST:PORT")


def test_long_lists_and_queues_come_page_by_page(web: Web) -> None:
    from crtool import service, tokens
    from crtool.store import pending
    from crtool.store.engine import transaction
    from crtool.store.models import Pending

    box: service.Mailbox = web.app.extensions["crtool"].box
    service.list_add(box, "white", [f"friend{i:02d}@x.test" for i in range(55)], "")
    with transaction(box.engine) as session:
        for i in range(55):
            pending.hold(session, Pending(
                owner=box.owner, sender=f"s{i:02d}@list.test", sender_key=f"s{i:02d}@list.test",
                recipient=box.owner, from_header="", subject=f"post {i:02d}", message_id="",
                received_at=1_000_000 + i, size=10, digest=f"{i:064d}", mta="qmail",
                status=pending.HELD, reason="list_headers"), [b"Subject: x\n\n"],
                tokens.new_token_id, lambda i=i: f"{i:064d}")
    client = sign_in(web)
    first = client.get("/whitelist").text
    assert "Page 1 of 2" in first and "friend00@x.test" in first and "friend50@x.test" not in first
    second = client.get("/whitelist?page=2").text
    assert "friend50@x.test" in second and "friend00@x.test" not in second
    overview = client.get("/").text
    assert "All 55 held as list_headers" in overview and "post 44" not in overview
    newest = client.get("/?reason=list_headers").text
    assert "Page 1 of 2" in newest and "post 54" in newest and "post 04" not in newest
    oldest = client.get("/?reason=list_headers&page=2").text
    assert "post 04" in oldest and "post 54" not in oldest
    assert client.get("/?reason=list_headers&page=x").status_code == 200


def test_the_digest_carries_a_one_time_login_link_when_web_url_is_set(web: Web) -> None:
    """With web_url set, the owner's digest links to the web pages with a fresh login link,
    in both parts; it logs in once, like `crtool web login-link`'s."""
    news = message("news@list.test", "Weekly news", headers={"List-Id": "<news.list.test>"})
    assert web.box.deliver(news, "news@list.test").returncode == 99
    out = web.box.ok("digest")
    assert out.startswith("digest "), out
    [(_, digest)] = web.box.outbox.drain(1)
    body = digest.get_body(("plain",))
    html = digest.get_body(("html",))
    assert body is not None and html is not None
    found = re.search(re.escape(WEB_URL) + r"(/login/[a-z2-7]{24})", str(body.get_content()))
    assert found, body.get_content()
    path = found.group(1)
    assert f'href="{WEB_URL}{path}"' in str(html.get_content())
    client = web.client()
    assert client.get(path).status_code == 200
    assert client.get("/").status_code == 200
    assert web.client().get(path).status_code == 410
