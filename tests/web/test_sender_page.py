"""The page a challenged sender opens (`/c/<token>`), through Flask's test client over a real
mailbox: the message was held and challenged by the real `crtool deliver`, and a POST confirms
through the same service function as a reply to the confirm address."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable

from werkzeug.test import TestResponse

from tests.support import Mailbox, message
from tests.web.conftest import STRANGER, WEB_URL, Web, held, listed

TTL = 14 * 86400


def form_value(page: TestResponse) -> str:
    found = re.search(r'name="confirm" value="([a-z2-7]+)"', page.text)
    assert found, page.text
    return found.group(1)


def whitelisted(box: Mailbox, address: str) -> bool:
    return listed(box, "whitelist", address)


def test_get_shows_who_asks_and_the_held_message_and_changes_nothing(web: Web) -> None:
    path = web.hold(subject="Lunch on Friday?")
    page = web.client().get(path)
    assert page.status_code == 200
    assert "alice@example.test" in page.text
    assert STRANGER in page.text
    assert "Lunch on Friday?" in page.text
    assert re.search(r"<button[^>]*>Confirm</button>", page.text)
    assert page.headers["Cache-Control"] == "no-store"
    assert "script-src" not in page.headers["Content-Security-Policy"]
    assert "<script" not in page.text
    assert web.box.maildir_messages() == []
    assert len(held(web.box)) == 1
    assert not whitelisted(web.box, STRANGER)


def test_link_scanners_get_head_and_prefetch_never_confirm(web: Web) -> None:
    """What a mail gateway's link scanner or a browser's speculation does: GET, HEAD, prefetch,
    each several times. Nothing is released, nothing whitelisted, nothing sent."""
    path = web.hold()
    client = web.client()
    for _ in range(3):
        assert client.get(path).status_code == 200
        assert client.head(path).status_code == 200
        assert client.get(path, headers={"Sec-Purpose": "prefetch"}).status_code == 200
        assert client.get(path, headers={"Purpose": "prefetch"}).status_code == 200
    assert web.box.maildir_messages() == []
    assert len(held(web.box)) == 1
    assert not whitelisted(web.box, STRANGER)
    web.box.outbox.drain(0)


def test_confirm_button_releases_and_whitelists_like_a_reply(web: Web) -> None:
    path = web.hold(subject="First")
    second = web.box.deliver(message(STRANGER, "Second"), STRANGER)
    assert second.returncode == 99
    web.box.outbox.drain(0)  # one challenge per sender per day
    client = web.client()
    page = client.post(path, data={"confirm": form_value(client.get(path))})
    assert page.status_code == 200
    assert "confirmed" in page.text
    delivered = web.box.maildir_messages()
    assert len(delivered) == 2
    assert any(b"Subject: First" in m for m in delivered)
    assert held(web.box) == {}
    assert whitelisted(web.box, STRANGER)
    web.box.outbox.drain(0)


def test_the_token_in_any_case_confirms(web: Web) -> None:
    """MTAs and people change the case of addresses; the token verifies alike (as by mail)."""
    path = web.hold()
    upper = path[:3] + path[3:].upper()
    client = web.client()
    page = client.get(upper)
    assert page.status_code == 200
    assert client.post(upper, data={"confirm": form_value(page)}).status_code == 200
    assert len(web.box.maildir_messages()) == 1


def test_a_post_without_the_pages_form_field_confirms_nothing(web: Web) -> None:
    path = web.hold()
    other = web.hold(sender="carol@remote.test")
    client = web.client()
    value = form_value(client.get(path))
    attempts = [
        client.post(path),
        client.post(path, data={"confirm": ""}),
        client.post(path, data={"confirm": value[:-1] + ("a" if value[-1] != "a" else "b")}),
        client.post(path, data={"confirm": form_value(client.get(other))}),
        client.post(path, data={"confirm": value}, headers={"Sec-Fetch-Site": "cross-site"}),
    ]
    for page in attempts:
        assert page.status_code == 400
        assert "Please use the Confirm button" in page.text
    assert web.box.maildir_messages() == []
    assert len(held(web.box)) == 2
    web.box.outbox.drain(0)


def test_forged_truncated_and_unknown_tokens_get_a_clear_404(web: Web) -> None:
    path = web.hold()
    token = path.rsplit("/", 1)[1]
    flipped = token[:-1] + ("a" if token[-1] != "a" else "b")
    unknown = "a" * 24
    client = web.client()
    for bad in (flipped, token[:-1], token + "a", unknown, "x" * 300, "%3Cscript%3E"):
        page = client.get(f"/c/{bad}")
        assert page.status_code == 404, bad
        assert "Link not recognised" in page.text
        assert "Lunch" not in page.text and STRANGER not in page.text
        posted = client.post(f"/c/{bad}", data={"confirm": form_value(client.get(path))})
        assert posted.status_code == 400
    assert web.box.maildir_messages() == []
    web.box.outbox.drain(0)


def test_an_expired_token_shows_so_and_the_button_asks_for_a_fresh_challenge(web: Web) -> None:
    path = web.hold()
    client = web.client()
    value = form_value(client.get(path))
    web.clock.now = time.time() + TTL + 301
    page = client.get(path)
    assert page.status_code == 410
    assert "expired" in page.text
    posted = client.post(path, data={"confirm": value})
    assert posted.status_code == 410
    assert "This link has expired" in posted.text
    assert web.box.maildir_messages() == []
    # The same rule as an expired reply: a fresh challenge, within the limits.
    [(args, challenge)] = web.box.outbox.drain(1)
    assert args[-1] == STRANGER
    assert challenge["Auto-Submitted"] == "auto-replied"
    assert len(held(web.box)) == 1


def test_a_used_token_delivers_nothing_twice(web: Web) -> None:
    path = web.hold()
    client = web.client()
    value = form_value(client.get(path))
    assert client.post(path, data={"confirm": value}).status_code == 200
    again = client.get(path)
    assert again.status_code == 410
    assert "Nothing is waiting" in again.text
    # A replay (token_used) changes nothing: the owner's removal of the sender stands.
    web.box.ok("whitelist", "remove", STRANGER)
    replay = client.post(path, data={"confirm": value})
    assert replay.status_code == 410
    assert "Nothing is waiting" in replay.text
    assert len(web.box.maildir_messages()) == 1
    assert not whitelisted(web.box, STRANGER)
    web.box.outbox.drain(0)


def test_a_sender_blacklisted_since_the_challenge_confirms_nothing(web: Web) -> None:
    path = web.hold()
    client = web.client()
    value = form_value(client.get(path))
    web.box.ok("blacklist", "add", "@remote.test")
    page = client.post(path, data={"confirm": value})
    assert page.status_code == 403
    assert "does not accept mail from this address" in page.text
    assert web.box.maildir_messages() == []
    assert len(held(web.box)) == 1
    assert not whitelisted(web.box, STRANGER)
    web.box.outbox.drain(0)


def test_a_message_the_owner_deleted_cannot_be_confirmed(web: Web) -> None:
    path = web.hold()
    client = web.client()
    value = form_value(client.get(path))
    web.box.ok("pending", "delete", *held(web.box))  # the command line, as the owner would
    assert client.get(path).status_code == 410
    page = client.post(path, data={"confirm": value})
    assert page.status_code == 410
    assert "Nothing is waiting" in page.text
    assert web.box.maildir_messages() == []
    assert not whitelisted(web.box, STRANGER)


def test_the_page_names_the_owner(make_web: Callable[..., Web]) -> None:
    web = make_web(name="Alice <b>Example</b>")
    page = web.client().get(web.hold())
    assert "<strong>Alice &lt;b&gt;Example&lt;/b&gt;</strong> (alice@example.test)" in page.text


def test_a_subject_of_html_and_script_is_shown_as_text(web: Web) -> None:
    subject = '<script>alert("x")</script><img src=x onerror=alert(1)> & <b>bold</b>'
    path = web.hold(subject=subject)
    page = web.client().get(path)
    assert page.status_code == 200
    assert "<script>alert" not in page.text
    assert "<img src=x" not in page.text
    assert "<b>bold</b>" not in page.text
    assert html.escape(subject, quote=False).replace("&quot;", '"') in page.text.replace(
        "&#34;", '"')


def test_the_page_is_rate_limited_per_client_address(make_web: Callable[..., Web]) -> None:
    web = make_web(web_rate_limit=3)
    path = web.hold()
    client = web.client()
    for _ in range(3):
        assert client.get(path).status_code == 200
    limited = client.get(path)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert client.post(path, data={"confirm": "x"}).status_code == 429
    assert client.get("/c/" + "a" * 24).status_code == 429
    # Another client (the proxy says who) is not held back by the first one's requests.
    other = {"X-Forwarded-For": "198.51.100.7"}
    assert client.get(path, headers=other).status_code == 200
    web.clock.now += 61
    assert client.get(path).status_code == 200
    assert web.box.maildir_messages() == []


def test_forwarded_headers_count_only_from_trusted_proxies(
        make_web: Callable[..., Web]) -> None:
    """Behind the proxy, the page's own links carry its prefix (X-Forwarded-Prefix); with
    web_trusted_proxies = 0 a client cannot choose its own address for the rate limit."""
    web = make_web(web_rate_limit=2)
    path = web.hold()
    page = web.client().get(path, headers={"X-Forwarded-Prefix": "/crtool",
                                            "X-Forwarded-Proto": "https"})
    assert 'href="/crtool/static/crtool.css"' in page.text
    direct = make_web(web_rate_limit=2, web_trusted_proxies=0)
    client = direct.client()
    for n in range(2):
        assert client.get(path, headers={"X-Forwarded-For": f"192.0.2.{n}"}).status_code == 200
    refused = client.get(path, headers={"X-Forwarded-For": "192.0.2.99",
                                        "X-Forwarded-Prefix": "/crtool"})
    assert refused.status_code == 429
    assert 'href="/static/crtool.css"' in refused.text


def test_challenge_carries_the_link_only_when_web_url_is_set(mailbox: Mailbox) -> None:
    result = mailbox.deliver(message(), STRANGER)
    assert result.returncode == 99
    [(_, challenge)] = mailbox.outbox.drain(1)
    body = challenge.get_content()
    assert "/c/" not in body and "http" not in body
    assert "-confirm-" in body
    config = mailbox.home / "config.toml"
    config.write_text(config.read_text().replace('web_url = ""', f'web_url = "{WEB_URL}/"'))
    assert mailbox.deliver(message("carol@remote.test"), "carol@remote.test").returncode == 99
    [(_, challenge)] = mailbox.outbox.drain(1)
    body = challenge.get_content()
    assert re.search(re.escape(WEB_URL) + r"/c/[a-z2-7]{24}\n", body), body
    assert "-confirm-" in body
