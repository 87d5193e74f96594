#!/usr/bin/env python3
"""A sendmail stand-in for the fault tests: each message it accepts becomes one file in
$CRTOOL_TEST_OUTBOX, written under a temporary name and renamed, so a test that counts
challenges never reads one half-written, even when the crtool that started it was killed."""

import os
import sys
import uuid

outbox = os.environ["CRTOOL_TEST_OUTBOX"]
os.makedirs(outbox, exist_ok=True)
data = sys.stdin.buffer.read()
name = uuid.uuid4().hex
tmp = os.path.join(outbox, name + ".tmp")
with open(tmp, "wb") as handle:
    handle.write(b"X-Test-Argv: " + " ".join(sys.argv[1:]).encode() + b"\n" + data)
    handle.flush()
    os.fsync(handle.fileno())
os.rename(tmp, os.path.join(outbox, name + ".eml"))
