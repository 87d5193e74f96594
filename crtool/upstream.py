"""The owner's own spam filter's verdict (setting `spam_header`), read where only it can write.

A filter run by the owner's mail system (SpamAssassin's `spamassassin`/`spamc`, rspamd) adds its
header at the top of the message, above the Received line of the owner's MTA; anything further
down was written by the sender or by hosts on the way, and a sender can write
`X-Spam-Flag: YES` as easily as anything else. So only the fields above the first Received line
count. SpamAssassin's own `Received: ... with SpamAssassin` line (it writes one when it wraps a
spam message as an attachment, `report_safe`) is the filter's, not the MTA's, and is read past.
A message with no Received line at all was not received over SMTP (a local injection, a test):
its whole head is the owner's system's.

A stranger's message so flagged is held without a challenge (reason `spam_flagged`): the
challenge would go to a forged address. Pure functions of bytes.
"""

from __future__ import annotations

_FILTER_RECEIVED = b"with spamassassin"


def parse_setting(setting: str) -> tuple[str, str]:
    """("x-spam-flag", "yes") for "X-Spam-Flag: YES"; ("x-spam", "") for a bare name."""
    name, _, value = setting.partition(":")
    return name.strip().lower(), value.strip().lower()


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(lowercased name, unfolded value) of each field of the header block, in order."""
    found: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line.strip():
            break
        if line[:1] in (b" ", b"\t"):
            if found:
                name, value = found[-1]
                found[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            break
        found.append((name.strip().lower(), value.strip()))
    return found


def _says(value: bytes, expected: str) -> bool:
    text = value.decode("utf-8", "replace").strip().lower()
    if not expected:
        return True
    if not text.startswith(expected):
        return False
    rest = text[len(expected):]
    return not rest or not rest[0].isalnum()


def spam_flagged(head: bytes, setting: str) -> bool:
    """Whether the owner's filter marked this message: `setting` ("X-Spam-Flag: YES") names a
    field and the start of its value; only fields above the owner's MTA's Received count."""
    if not setting.strip():
        return False
    name, expected = parse_setting(setting)
    wanted = name.encode("ascii", "replace")
    for field, value in _fields(head):
        if field == b"received" and _FILTER_RECEIVED not in value.lower():
            return False
        if field == wanted and _says(value, expected):
            return True
    return False
