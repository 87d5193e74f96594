"""`make demo`: the main job, walked through the real code path on the embedded SQLite default.

Every step runs `crtool` as a separate process, `deliver` exactly as qmail-local would run it
from ~/.qmail-default (absolute path, qmail's environment, working directory $HOME). Challenges
are "sent" by this same script acting as sendmail: it files them where the demo can show them,
instead of handing them to a mail system that this machine may not have.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

CRTOOL = str(Path(sys.executable).parent / "crtool")
OWNER = "alice@example.test"


def as_sendmail(outbox: Path, argv: list[str]) -> int:
    """The stand-in sendmail: keep the message and its arguments for the demo to show."""
    outbox.mkdir(exist_ok=True)
    number = len(list(outbox.glob("*.eml")))
    (outbox / f"{number}.eml").write_bytes(sys.stdin.buffer.read())
    (outbox / f"{number}.args").write_text(shlex.join(argv))
    return 0


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m")


def crtool(home: Path, *args: str) -> str:
    result = subprocess.run([CRTOOL, "--home", str(home), *args], capture_output=True,
                            text=True, check=False)
    print(f"$ crtool {shlex.join(args)}")
    print("  " + (result.stdout.strip() or result.stderr.strip()).replace("\n", "\n  "))
    if result.returncode != 0:
        raise SystemExit(f"demo failed: crtool {args[0]} exited {result.returncode}")
    return result.stdout


def deliver(user_home: Path, sender: str, recipient: str, text: str) -> int:
    """qmail-local's way of running `|crtool deliver` for one message."""
    local, _, host = recipient.rpartition("@")
    ext = local.split("-", 1)[1] if "-" in local else ""
    env = {"PATH": "/var/qmail/bin:/usr/local/bin:/usr/bin:/bin", "SENDER": sender,
           "NEWSENDER": sender, "RECIPIENT": recipient, "USER": "alice",
           "HOME": str(user_home), "HOST": host, "LOCAL": local, "EXT": ext,
           "DEFAULT": ext, "DTLINE": f"Delivered-To: {recipient}\n",
           "RPLINE": f"Return-Path: <{sender}>\n"}
    result = subprocess.run([CRTOOL, "deliver"], input=text.encode(), env=env,
                            cwd=user_home, capture_output=True, check=False)
    said = result.stderr.decode().strip()
    meaning = {0: "accepted: qmail's next .qmail line delivers it",
               99: "handled by crtool", 111: "temporary failure: qmail retries"}
    print(f"  from {sender or '<>'} to {recipient}")
    print(f"  exit {result.returncode} ({meaning.get(result.returncode, '?')})"
          + (f"; {said}" if said else ""))
    return result.returncode


def mail(sender: str, to: str, subject: str, body: str) -> str:
    stamp = email.utils.formatdate(usegmt=True)
    ident = email.utils.make_msgid("demo", "remote.test")
    return (f"From: {sender}\nTo: {to}\nSubject: {subject}\nDate: {stamp}\n"
            f"Message-ID: {ident}\n\n{body}")


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"demo failed: {what}")


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--as-sendmail":
        return as_sendmail(Path(sys.argv[2]), sys.argv[3:])
    work = Path(tempfile.mkdtemp(prefix="crtool-demo-"))
    try:
        return walk(work)
    finally:
        stop_server(work / "alice" / ".crtool")
        shutil.rmtree(work, ignore_errors=True)


def stop_server(home: Path) -> None:
    """The deliveries started `crtool serve` on demand (serve_idle); it would wait ten minutes
    for more mail in a home about to be removed, so it is stopped here."""
    from crtool import autostart

    pid = autostart.running(str(home))
    if pid is not None:
        os.kill(pid, signal.SIGTERM)


def walk(work: Path) -> int:
    user_home = work / "alice"
    user_home.mkdir()
    home, outbox, maildir = user_home / ".crtool", work / "outbox", user_home / "Maildir"
    sendmail = f"{shlex.quote(sys.executable)} {shlex.quote(__file__)} --as-sendmail {outbox}"

    step("1. Set up crtool for alice@example.test (SQLite in ~/.crtool)")
    crtool(home, "init", "--address", OWNER, "--maildir", str(maildir), "--sendmail", sendmail)

    step("2. Whitelist a friend")
    crtool(home, "whitelist", "add", "carol@friends.test", "--note", "an old friend")

    step("3. The friend writes: whitelisted")
    code = deliver(user_home, "carol@friends.test", OWNER,
                   mail("carol@friends.test", OWNER, "Dinner", "See you at eight.\n"))
    expect(code == 0, "the friend's mail was not whitelisted")

    step("4. A stranger writes: held, and one challenge goes out")
    code = deliver(user_home, "bob@remote.test", OWNER,
                   mail("Bob <bob@remote.test>", OWNER, "Quote for the roof",
                        "Hello Alice,\nhere is the quote you asked for.\n"))
    expect(code == 99, "the stranger's mail was not held")
    challenge_bytes = (outbox / "0.eml").read_bytes()
    print(f"  sendmail ran with: {(outbox / '0.args').read_text()}")
    print("  ---- the challenge ----")
    print("  " + challenge_bytes.decode().strip().replace("\n", "\n  "))
    print("  -----------------------")
    challenge = email.message_from_bytes(challenge_bytes, policy=email.policy.default)
    confirm_address = str(challenge["Reply-To"])

    step("5. The queue of held mail")
    crtool(home, "pending", "list")

    step("6. The stranger replies to the confirm address (lowercased, as Postfix would)")
    code = deliver(user_home, "bob@remote.test", confirm_address.lower(),
                   mail("bob@remote.test", confirm_address, "Re: " + str(challenge["Subject"]),
                        "Yes, that was me.\n"))
    expect(code == 99, "the confirmation was not handled")
    delivered = sorted((maildir / "new").iterdir())
    print(f"  Maildir/new now holds {len(delivered)} message(s); the first lines:")
    print("  " + "\n  ".join(delivered[0].read_text().splitlines()[:4]))

    step("7. The stranger is whitelisted now; his next message passes")
    crtool(home, "whitelist", "check", "bob@remote.test")
    code = deliver(user_home, "bob@remote.test", OWNER,
                   mail("bob@remote.test", OWNER, "One more thing", "Thanks!\n"))
    expect(code == 0, "the confirmed sender is not whitelisted")

    step("8. A newsletter and a password reset: held without a challenge")
    deliver(user_home, "news@lists.test", OWNER,
            "List-Id: <weekly.lists.test>\n" + mail("news@lists.test", OWNER, "Weekly news",
                                                    "This week...\n"))
    code = deliver(user_home, "noreply@shop.test", OWNER,
                   mail("Shop <noreply@shop.test>", OWNER, "Reset your password",
                        "Click here within an hour.\n"))
    expect(code == 99, "the password reset was not held")
    crtool(home, "pending", "list", "--new")

    step("9. The digest: one mail to alice listing what was held, by reason")
    crtool(home, "digest")
    digest_file = sorted(outbox.glob("*.eml"), key=lambda p: int(p.stem))[-1]
    digest = email.message_from_bytes(digest_file.read_bytes(), policy=email.policy.default)
    text = digest.get_body(("plain",)).get_content()  # type: ignore[attr-defined]
    print(f"  Subject: {digest['Subject']}")
    print("  " + text.strip().replace("\n", "\n  "))
    found = re.search(r"Subject: Reset your password\n\s+release: (\S+)", text)
    expect(found is not None, "the digest lists no release address for the reset")
    release = found.group(1) if found else ""

    step("10. Alice replies to the password reset's release address: it is delivered")
    before = len(list((maildir / "new").iterdir()))
    code = deliver(user_home, OWNER, release, mail(OWNER, release, "release", "\n"))
    expect(code == 99 and len(list((maildir / "new").iterdir())) == before + 1,
           "the release by mail delivered nothing")
    print("  the same address again changes nothing and sends nothing:")
    deliver(user_home, OWNER, release, mail(OWNER, release, "release", "\n"))

    outgoing_and_tags(user_home, home, outbox)

    step("14. The queue, the counts and one sender's history")
    crtool(home, "pending", "list", "--all")
    crtool(home, "stats")
    crtool(home, "history", "bob@remote.test")
    print("\nDemo finished: whitelisted delivery, hold with challenge, confirmation, release, "
          "digest, release by mail, the owner's own mail and its reply, a dated address.")
    return 0


def outgoing_and_tags(user_home: Path, home: Path, outbox: Path) -> None:
    """The owner writes to someone new through `crtool sendmail` (as mutt runs it), and the
    answer in that thread arrives without a challenge; a dated address lets a sign-up in."""
    step("11. Alice writes to carol through `crtool sendmail` (mutt: set sendmail=...)")
    text = (f"From: Alice <{OWNER}>\nTo: Carol <carol@new.test>\nCc: dave@new.test\n"
            "Subject: The trip\n\nShall we book the train?\n")
    argv = ["sendmail", "-oem", "-oi", "-t"]
    print(f"$ crtool {shlex.join(argv)} < message")
    sent_before = len(list(outbox.glob("*.eml")))
    result = subprocess.run([CRTOOL, "--home", str(home), *argv], input=text.encode(),
                            capture_output=True, check=False)
    expect(result.returncode == 0, f"crtool sendmail exited {result.returncode}")
    sent = outbox / f"{sent_before}.eml"
    print(f"  exit 0; the real sendmail ran with: {(outbox / f'{sent_before}.args').read_text()}")
    print("  " + "\n  ".join(sent.read_text().splitlines()[:3]))
    message_id = email.message_from_bytes(sent.read_bytes())["Message-ID"]
    expect(message_id.endswith(".crtool@example.test>"), "no signed Message-ID was given")
    crtool(home, "whitelist", "list")

    step("12. Dave answers from his other address (nobody alice wrote to): no challenge")
    before = len(list(outbox.glob("*.eml")))
    answer = mail("dave.home@else.test", OWNER, "Re: The trip", "Yes, the 9:14.\n")
    answer = answer.replace("\n\n", f"\nIn-Reply-To: {message_id}\n\n", 1)
    code = deliver(user_home, "dave.home@else.test", OWNER, answer)
    expect(code == 0 and len(list(outbox.glob("*.eml"))) == before,
           "the reply was not let through without a challenge")
    crtool(home, "whitelist", "check", "dave.home@else.test")

    step("13. A dated address for a sign-up: its automated mail passes until it expires")
    dated = crtool(home, "address", "dated", "--valid", "7d").strip()
    signup = mail("noreply@shop.test", dated, "Confirm your account", "Click here.\n")
    signup = signup.replace("\n\n", "\nAuto-Submitted: auto-generated\n\n", 1)
    code = deliver(user_home, "noreply@shop.test", dated, signup)
    expect(code == 0, "the dated address did not let the sign-up through")
    crtool(home, "address", "check", dated)


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
