"""The count of messages the fast path accepted: HOME/delivered.tally, which `stats` reads.

The full path records a "delivered" event per message, but that is a write, and every write
goes through SQLAlchemy (contract §10), the very import the fast path avoids; writing the event
through `sqlite3` would be a second implementation of the store. So the fast path appends one
byte to HOME/delivered.tally instead (O_APPEND: concurrent deliveries never lose each other's
byte), and `stats` adds the file's size to the events it counts. The count stays exact; what the
tally does not keep is the event's time, sender and matching key, which `stats` does not show.
The byte is not fsynced and a failure to write it is ignored: a count is not worth a retry of a
message that is already accepted.
"""

from __future__ import annotations

import os
from pathlib import Path

TALLY_NAME = "delivered.tally"
# Not crtool.private: the fast path imports as little as it can.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def count_delivery(home: Path) -> None:
    """Add one to the fast path's tally of accepted messages (one byte, appended).

    Side effect: HOME/delivered.tally grows by one byte; errors are ignored (see above).
    """
    try:
        fd = os.open(home / TALLY_NAME,
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
    except OSError:
        return
    try:
        os.write(fd, b".")
    except OSError:
        pass
    finally:
        os.close(fd)


def tallied_deliveries(home: Path) -> int:
    """How many messages the fast path accepted: the tally's size, for `stats`."""
    try:
        return (home / TALLY_NAME).stat().st_size
    except OSError:
        return 0
