"""The checklist of RFC 3834 and docs/reasons.md, one table row per rule, on the pure
policy core: each row is an incoming message and the reason it gets no challenge (or None)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from crtool import addresses, policy
from crtool.addresses import OwnerAddress
from crtool.message import parse_head

OWNER = "alice@example.test"
MX = "mx.example.test"


def incoming(head: str = "", sender: str = "bob@remote.test",
             recipient: str = OWNER, valid: bool = True,
             authserv_id: str = MX) -> policy.Incoming:
    text = "From: Bob <bob@remote.test>\nSubject: hi\n" + head
    return policy.Incoming(sender=sender, sender_valid=valid, recipient=recipient,
                           facts=parse_head(text.encode()), owner=OwnerAddress(OWNER),
                           authserv_id=authserv_id)


def ar(result: str, serv: str = MX) -> str:
    return f"Authentication-Results: {serv}; {result}\n"


# (row id, message, reason expected or None for "challenge it"). One row per rule at least.
TABLE: list[tuple[str, policy.Incoming, str | None]] = [
    ("ordinary", incoming(), None),
    ("spam_flagged", replace(incoming(), spam_flagged=True), "spam_flagged"),
    ("null_sender", incoming(sender=""), "null_sender"),
    ("double_bounce", incoming(sender="#@[]", valid=False), "double_bounce"),
    ("mailer_daemon", incoming(sender="MAILER-DAEMON@remote.test"), "mailer_daemon"),
    ("postmaster", incoming(sender="postmaster@remote.test"), "mailer_daemon"),
    ("invalid_sender", incoming(sender="bob@remote.test;rm", valid=False), "invalid_sender"),
    ("own_address", incoming(sender="Alice@Example.TEST"), "own_address"),
    ("own_extension", incoming(sender="alice-lists@example.test"), "own_address"),
    ("to_confirm_address", incoming(recipient="alice-confirm-abc@alias.test"),
     "to_confirm_address"),
    ("challenge_sender", incoming(sender="carol-confirm-1234.ab@other.test"),
     "challenge_sender"),
    ("qconfirm_sender", incoming(sender="carol-qconfirm-x@other.test"), "challenge_sender"),
    ("auto_submitted", incoming("Auto-Submitted: auto-replied\n"), "auto_submitted"),
    ("auto_generated", incoming("Auto-Submitted: Auto-Generated; owner=x\n"), "auto_submitted"),
    ("response_suppressed", incoming("X-Auto-Response-Suppress: All\n"),
     "response_suppressed"),
    ("response_suppressed_list", incoming("X-Auto-Response-Suppress: DR, AutoReply\n"),
     "response_suppressed"),
    ("challenge_headers", incoming("X-TMDA-Confirm: yes\n"), "challenge_headers"),
    ("crtool_challenge", incoming("X-Crtool-Challenge: abcd\n"), "challenge_headers"),
    ("list_id", incoming("List-Id: <dev.lists.test>\n"), "list_headers"),
    ("list_unsubscribe", incoming("List-Unsubscribe: <mailto:u@x.test>\n"), "list_headers"),
    ("x_mailing_list", incoming("X-Mailing-List: dev\n"), "list_headers"),
    ("bulk_precedence", incoming("Precedence: bulk\n"), "bulk_precedence"),
    ("junk_precedence", incoming("Precedence: JUNK (spam)\n"), "bulk_precedence"),
    ("list_sender_owner", incoming(sender="owner-dev@lists.test"), "list_sender"),
    ("list_sender_request", incoming(sender="dev-request@lists.test"), "list_sender"),
    ("list_sender_majordomo", incoming(sender="majordomo@lists.test"), "list_sender"),
    ("noreply_sender", incoming(sender="no-reply@shop.test"), "noreply_sender"),
    ("noreply_suffix", incoming(sender="billing.noreply@shop.test"), "noreply_sender"),
    ("do_not_reply", incoming(sender="do_not_reply+42@shop.test"), "noreply_sender"),
    ("no_header_block", policy.Incoming("bob@remote.test", True, OWNER,
                                         parse_head(b"garbage without a colon\n\nbody"),
                                         OwnerAddress(OWNER)), "no_header_block"),
    ("spf_fail", incoming(ar("spf=fail smtp.mailfrom=bob@remote.test")), "spf_fail"),
    ("spf_fail_domain_only", incoming(ar("spf=fail (sender IP 192.0.2.1) "
                                         "smtp.mailfrom=Remote.TEST")), "spf_fail"),
    ("dmarc_fail", incoming(ar("dmarc=fail (p=reject) header.from=remote.test")),
     "dmarc_fail"),
    # RFC 8601's forms: a method version, a quoted value, a clause with no result (skipped,
    # never the end of the header) and an empty one.
    ("spf_fail_versioned", incoming(ar("spf/1=fail smtp.mailfrom=bob@remote.test")),
     "spf_fail"),
    ("dmarc_fail_quoted", incoming(ar('dmarc=fail header.from="remote.test"')), "dmarc_fail"),
    ("dmarc_fail_after_junk", incoming(ar("none; ; dmarc=fail header.from=remote.test")),
     "dmarc_fail"),
]

# Rows that look like a rule applies and must not: each is a challenge.
NOT_SUPPRESSED: list[tuple[str, policy.Incoming]] = [
    ("auto_submitted_no", incoming("Auto-Submitted: No (a person wrote this)\n")),
    # RFC 3834 lets parameters follow after ";", with or without white space.
    ("auto_submitted_no_parameter", incoming("Auto-Submitted: no;owner=alice\n")),
    ("suppress_dr_oof_only", incoming("X-Auto-Response-Suppress: DR, RN, NRN, OOF\n")),
    ("suppress_none", incoming("X-Auto-Response-Suppress: None\n")),
    ("precedence_first_class", incoming("Precedence: first-class\n")),
    ("owner_lookalike", incoming(sender="alice@example.test.evil.test")),
    ("owner_name_elsewhere", incoming(sender="alice@remote.test")),
    ("reply_in_name", incoming(sender="replyguy@remote.test")),
    ("confirmed_in_name", incoming(sender="confirmed@remote.test")),
    # Only the owner's MTA is believed: a header with another authserv-id is the sender's.
    ("foreign_authserv", incoming(ar("spf=fail smtp.mailfrom=bob@remote.test",
                                     serv="mx.evil.test"))),
    ("no_authserv_configured", incoming(ar("dmarc=fail header.from=remote.test"),
                                        authserv_id="")),
    # SPF judged for the envelope domain only, DMARC for the From domain only.
    ("spf_fail_other_domain", incoming(ar("spf=fail smtp.mailfrom=x@elsewhere.test"))),
    ("spf_fail_for_helo", incoming(ar("spf=fail smtp.helo=mail.remote.test"))),
    ("spf_fail_unnamed", incoming(ar("spf=fail"))),
    ("dmarc_fail_other_domain", incoming(ar("dmarc=fail header.from=elsewhere.test"))),
    ("spf_softfail", incoming(ar("spf=softfail smtp.mailfrom=bob@remote.test"))),
    ("spf_permerror", incoming(ar("spf=permerror smtp.mailfrom=bob@remote.test"))),
    ("dmarc_pass", incoming(ar("spf=pass smtp.mailfrom=bob@remote.test; "
                               "dmarc=pass header.from=remote.test"))),
    # A result written inside a comment is no result.
    ("fail_in_comment", incoming(ar("spf=pass (spf=fail smtp.mailfrom=bob@remote.test) "
                                    "smtp.mailfrom=bob@remote.test"))),
]


@pytest.mark.parametrize(("message", "reason"), [row[1:] for row in TABLE],
                         ids=[row[0] for row in TABLE])
def test_each_rule_names_its_reason(message: policy.Incoming, reason: str | None) -> None:
    verdict = policy.classify(message, None)
    if reason is None:
        assert verdict == policy.Verdict(policy.Action.CHALLENGE, reason="challenged")
    else:
        assert verdict == policy.Verdict(policy.Action.HOLD, reason=reason)


@pytest.mark.parametrize("message", [row[1] for row in NOT_SUPPRESSED],
                         ids=[row[0] for row in NOT_SUPPRESSED])
def test_near_misses_are_challenged(message: policy.Incoming) -> None:
    assert policy.suppression_reason(message) is None


def test_the_table_has_a_row_for_every_rule() -> None:
    """A rule added to policy without a row here fails, and so does a rule no row reaches."""
    reached = {reason for _, _, reason in TABLE if reason is not None}
    assert reached == {rule.reason for rule in policy.SUPPRESSION_RULES}


def test_dmarc_is_judged_on_the_from_domain_not_the_envelope() -> None:
    """A list or forwarder resends with its own envelope sender; the From domain is what
    DMARC speaks of."""
    message = policy.Incoming(
        sender="bounces@forwarder.test", sender_valid=True, recipient=OWNER,
        facts=parse_head(b"From: Bob <bob@remote.test>\n"
                         b"Authentication-Results: mx.example.test 1;\n"
                         b"  dmarc = fail header.from=remote.test\n"),
        owner=OwnerAddress(OWNER), authserv_id="MX.example.test")
    assert policy.suppression_reason(message) == "dmarc_fail"


def test_whitelist_and_blacklist_come_before_every_rule() -> None:
    """A listed sender's fate is the owner's choice: the checklist only governs replies."""
    bulk = incoming("Precedence: bulk\n")
    white = policy.classify(bulk, policy.Listing(policy.WHITE, "bob@remote.test"))
    black = policy.classify(bulk, policy.Listing(policy.BLACK, "bob@remote.test"))
    assert (white.action, black.action) == (policy.Action.ACCEPT, policy.Action.BLACKLISTED)


# The keys of one sender at every specificity: the tagged form, the person, the domain, the
# parent domains.
TAGGED = "bob+news@mail.remote.test"


@pytest.mark.parametrize("key", addresses.lookup_keys(TAGGED))
def test_the_blacklist_wins_a_tie_at_every_specificity(key: str) -> None:
    """The same key on both lists: blacklisted, whichever list the store returns first."""
    keys = addresses.lookup_keys(TAGGED)
    for matches in ([(policy.WHITE, key), (policy.BLACK, key)],
                    [(policy.BLACK, key), (policy.WHITE, key)]):
        assert policy.decide_listing(matches, keys) == policy.Listing(policy.BLACK, key)


def test_the_more_specific_entry_wins_whichever_list_it_is_on() -> None:
    keys = addresses.lookup_keys(TAGGED)
    assert keys == ["bob+news@mail.remote.test", "bob@mail.remote.test", "@mail.remote.test",
                    "*.remote.test", "*.test"]
    for narrow, wide in itertools.pairwise(keys):
        for narrow_list, wide_list in ((policy.WHITE, policy.BLACK),
                                       (policy.BLACK, policy.WHITE)):
            for matches in ([(narrow_list, narrow), (wide_list, wide)],
                            [(wide_list, wide), (narrow_list, narrow)]):
                assert policy.decide_listing(matches, keys) == policy.Listing(narrow_list,
                                                                              narrow)
    assert policy.decide_listing([], keys) is None


def test_list_kinds_are_read_from_the_store_text_and_unknown_ones_decide_nothing() -> None:
    keys = addresses.lookup_keys(TAGGED)
    found = policy.decide_listing([("white", keys[1])], keys)
    assert found == policy.Listing(policy.ListKind.WHITE, keys[1])
    assert found is not None and type(found.list_name) is policy.ListKind
    # A list of a newer version, even on the most specific key, loses to a known one.
    assert policy.decide_listing([("grey", keys[0]), ("black", keys[-1])], keys) == \
        policy.Listing(policy.BLACK, keys[-1])
    assert policy.decide_listing([("grey", keys[0])], keys) is None
    assert policy.LIST_COMMANDS == {"whitelist": policy.WHITE, "blacklist": policy.BLACK}


def test_an_entry_under_a_key_of_the_sender_beats_one_the_keys_do_not_name() -> None:
    """A list: or glob: entry is found by other means than the sender's look-up keys; it
    ranks below every key of the sender, and of two such entries the first found stands."""
    keys = addresses.lookup_keys(TAGGED)
    for matches in ([(policy.BLACK, "list:news.remote.test"), (policy.WHITE, keys[-1])],
                    [(policy.WHITE, keys[-1]), (policy.BLACK, "list:news.remote.test")]):
        assert policy.decide_listing(matches, keys) == policy.Listing(policy.WHITE, keys[-1])
    assert policy.decide_listing([(policy.WHITE, "list:a.test"), (policy.WHITE, "list:b.test")],
                                 keys) == policy.Listing(policy.WHITE, "list:a.test")
    assert policy.decide_listing([(policy.WHITE, "list:a.test"), (policy.BLACK, "list:b.test")],
                                 keys) == policy.Listing(policy.BLACK, "list:b.test")


WHITE = policy.Listing(policy.WHITE, "bob@remote.test")


@pytest.mark.parametrize(("results", "forged"), [
    ("dmarc=fail header.from=remote.test", True),
    ("spf=fail smtp.mailfrom=bob@remote.test", True),
    ("spf=fail smtp.mailfrom=bob@remote.test; dkim=pass header.d=evil.test", True),
    ("spf=fail smtp.mailfrom=bob@remote.test; dkim=fail header.d=remote.test", True),
    ("spf=fail smtp.mailfrom=bob@remote.test; dkim=pass header.d=remote.test", False),
    ("spf=fail smtp.mailfrom=bob@remote.test; dkim=pass header.i=@remote.test", False),
    ("spf=fail smtp.mailfrom=bob@remote.test; dkim=pass header.d=test", False),
    ("spf=fail smtp.mailfrom=bob@remote.test; dkim=pass header.d=x.remote.test", True),
    ("spf=fail smtp.mailfrom=bob@remote.test; dkim=pass header.d=otherremote.test", True),
    ("dmarc=fail header.from=remote.test; dkim=pass header.d=remote.test", True),
    ("spf=softfail smtp.mailfrom=bob@remote.test", False),
    ("spf=fail smtp.helo=remote.test", False),
    ("dmarc=fail header.from=other.test", False),
    ("spf=pass smtp.mailfrom=bob@remote.test; dmarc=pass header.from=remote.test", False),
])
def test_a_whitelisted_sender_the_mta_calls_forged_is_held(results: str, forged: bool) -> None:
    verdict = policy.classify(incoming(ar(results)), WHITE)
    if forged:
        assert verdict == policy.Verdict(policy.Action.HOLD, "whitelist_forged", listing=WHITE)
        assert "whitelist_forged" in policy.WHITELIST_HOLD_REASONS
    else:
        assert verdict.action is policy.Action.ACCEPT


SRS = "SRS0=HHHH=TT=remote.test=bob@fwd.test"


@pytest.mark.parametrize(("key", "results", "authserv_id", "forged"), [
    # Whitelisted only as the sender the forwarder names: his domain's signature is needed.
    ("bob@remote.test", "spf=pass smtp.mailfrom=" + SRS, MX, True),
    ("@remote.test", "", MX, True),
    ("bob@remote.test", "dkim=pass header.d=fwd.test", MX, True),
    ("bob@remote.test", "dkim=pass header.d=remote.test", MX, False),
    ("bob@remote.test", "", "", False),
    # The forwarder itself, or its exact SRS address, is whitelisted: its SPF is its own.
    ("@fwd.test", "", MX, False),
    (SRS.lower(), "", MX, False),
    ("@fwd.test", "spf=fail smtp.mailfrom=" + SRS, MX, True),
])
def test_a_forwarders_word_is_no_proof_of_the_sender_it_names(
        key: str, results: str, authserv_id: str, forged: bool) -> None:
    message = incoming(ar(results) if results else "", sender=SRS, authserv_id=authserv_id)
    verdict = policy.classify(message, policy.Listing(policy.WHITE, key))
    assert verdict.reason == ("whitelist_forged" if forged else "whitelisted")


def test_only_the_owners_mta_can_call_a_whitelisted_sender_forged() -> None:
    for message in (incoming(ar("dmarc=fail header.from=remote.test", serv="mx.remote.test")),
                    incoming(ar("dmarc=fail header.from=remote.test"), authserv_id="")):
        assert policy.classify(message, WHITE).action is policy.Action.ACCEPT


def test_a_confirm_recipient_is_a_confirmation_whatever_its_headers() -> None:
    message = incoming("Precedence: bulk\n", recipient="Alice-Confirm-ABC@EXAMPLE.test")
    assert policy.classify(message, None) == policy.Verdict(policy.Action.CONFIRM,
                                                            reason="confirm", token="abc")


@pytest.mark.parametrize("word", ["release", "accept"])
def test_release_and_accept_addresses_are_acted_on_never_delivered(word: str) -> None:
    """The owner's digest addresses are commands, even from a whitelisted sender, so the
    fast path (which only ever accepts) leaves them to the full path."""
    message = incoming("", recipient=f"alice-{word.upper()}-xyz@example.test")
    white = policy.Listing(policy.WHITE, "bob@remote.test")
    assert policy.classify(message, white) == policy.Verdict(policy.Action.CONFIRM,
                                                             reason=word, token="xyz")


def test_own_digest_is_accepted_despite_null_sender_and_auto_submitted() -> None:
    digest = replace(incoming("Auto-Submitted: auto-generated\n", sender=""), own_digest=True)
    assert policy.classify(digest, None).action is policy.Action.ACCEPT
    assert policy.classify(replace(digest, own_digest=False), None).reason == "null_sender"


@pytest.mark.parametrize(("to_sender", "last_hour", "reason"), [
    (0, 0, None),
    (0, 29, None),
    (1, 0, "sender_rate_limit"),
    (1, 30, "sender_rate_limit"),
    (0, 30, "global_rate_limit"),
    (0, 31, "global_rate_limit"),
])
def test_rate_limits_at_their_defaults(to_sender: int, last_hour: int,
                                       reason: str | None) -> None:
    counts = policy.ChallengeCounts(to_sender_in_window=to_sender, in_last_hour=last_hour)
    assert policy.rate_limit_reason(counts, per_sender=1, per_hour=30) == reason


def test_a_limit_of_zero_sends_nothing() -> None:
    counts = policy.ChallengeCounts(0, 0)
    assert policy.rate_limit_reason(counts, per_sender=0, per_hour=30) == "sender_rate_limit"
    assert policy.rate_limit_reason(counts, per_sender=1, per_hour=0) == "global_rate_limit"


@pytest.mark.parametrize(("head", "sender", "refusal"), [
    ("", "bob@remote.test", None),
    ("", "", "confirm_from_null_sender"),
    ("", "#@[]", "confirm_from_null_sender"),
    ("Auto-Submitted: auto-replied\n", "bob@remote.test", "confirm_automated"),
    ("Precedence: junk\n", "bob@remote.test", "confirm_automated"),
    ("List-Id: <dev.lists.test>\n", "bob@remote.test", "confirm_automated"),
    ("X-TMDA-Confirm: yes\n", "bob@remote.test", "confirm_automated"),
    ("Auto-Submitted: no\n", "bob@remote.test", None),
])
def test_automated_replies_confirm_nothing(head: str, sender: str,
                                           refusal: str | None) -> None:
    facts = parse_head(f"From: {sender or 'x@y.test'}\n{head}".encode())
    assert policy.confirm_reply_refusal(facts, sender) == refusal
    if refusal is not None:
        assert refusal in policy.DROP_REASONS


def test_authentication_results_below_500_padding_headers_still_count() -> None:
    """The owner's MTA may append its result at the bottom: padding above it hides nothing."""
    padding = "".join(f"X-Pad-{n}: {n}\n" for n in range(600))
    fake = "".join(ar("spf=pass smtp.mailfrom=remote.test", "evil.test") for _ in range(50))
    head = padding + fake + ar("spf=fail smtp.mailfrom=remote.test")
    assert policy.suppression_reason(incoming(head)) == "spf_fail"


def test_an_expected_domain_is_accepted_but_the_lists_still_come_first() -> None:
    automated = replace(incoming("Auto-Submitted: auto-generated\n"), expected=True)
    assert policy.classify(automated, None).action is policy.Action.ACCEPT
    assert policy.classify(automated, None).reason == "expected"
    black = policy.Listing(policy.BLACK, "@remote.test")
    assert policy.classify(automated, black).action is policy.Action.BLACKLISTED


def test_dkim_and_spf_domains_are_compared_without_case_or_the_root_dot() -> None:
    for result in ("dkim=pass header.d=Remote.TEST.", "dkim=pass header.i=@Remote.test",
                   "dkim=pass header.i=REMOTE.test.", "dkim=pass header.d=test."):
        assert policy.dkim_passed_for(incoming(ar(result)), "remote.test"), result
    for result in ("dkim=pass header.d=.remote.test", "dkim=pass header.i=x",
                   "dkim=pass header.b=abc", "dkim=pass header.d=mote.test"):
        assert not policy.dkim_passed_for(incoming(ar(result)), "remote.test"), result
    assert policy.spf_failed(incoming(ar("spf=fail smtp.mailfrom=REMOTE.test.")))
    assert not policy.spf_failed(incoming(ar("spf=fail smtp.mailfrom=.remote.test")))
