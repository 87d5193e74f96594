"""atheris harness for `crtool deliver`: message bytes and envelope strings in, and the
delivery must exit "done" (99) with one stderr line, never raise, never tempfail (111).

Long runs only, not in CI (CI runs the Hypothesis property in
tests/integration/test_hostile_fuzz.py). See fuzz/README.md.

    python fuzz/fuzz_deliver.py -max_total_time=3600 /tmp/crtool-corpus fuzz/corpus
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from contextlib import redirect_stderr
from pathlib import Path

HOME = Path(tempfile.mkdtemp(prefix="crtool-fuzz-")) / "alice"


def setup() -> None:
    """A real home, initialised by `crtool init`, with a sendmail that accepts and discards."""
    from crtool.cli import main

    HOME.mkdir(parents=True)
    sendmail = HOME / "sendmail"
    sendmail.write_text("#!/bin/sh\ncat >/dev/null\n")
    sendmail.chmod(0o755)
    with redirect_stderr(io.StringIO()), open(os.devnull, "w") as null:
        saved, sys.stdout = sys.stdout, null
        try:
            code = main(["--home", str(HOME / ".crtool"), "init", "--address",
                         "alice@example.test", "--maildir", str(HOME / "Maildir"),
                         "--sendmail", str(sendmail)])
        finally:
            sys.stdout = saved
    if code != 0:
        raise SystemExit("crtool init failed")


def one_input(data: bytes) -> None:
    """First byte: how the envelope arrives; next two length-prefixed fields: sender and
    recipient; the rest: the message."""
    from crtool.cli import main

    if len(data) < 3:
        return
    mode, sender_len, recipient_len = data[0], data[1], data[2]
    sender = data[3:3 + sender_len]
    recipient = data[3 + sender_len:3 + sender_len + recipient_len]
    message = data[3 + sender_len + recipient_len:]
    argv = ["--home", str(HOME / ".crtool"), "deliver"]
    # Neither argv nor the environment can carry a NUL.
    sender, recipient = sender.replace(b"\0", b""), recipient.replace(b"\0", b"")
    if mode & 1:
        argv += ["--sender=" + os.fsdecode(sender), "--recipient=" + os.fsdecode(recipient)]
    else:
        os.environb[b"SENDER"] = sender
        os.environb[b"RECIPIENT"] = recipient
    os.environb[b"DTLINE"] = b"Delivered-To: alice@example.test\n"
    err = io.StringIO()
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(message))
    try:
        with redirect_stderr(err):
            code = main(argv)
    finally:
        sys.stdin = saved
    line = err.getvalue()
    if code != 99 or line.count("\n") != 1 or "Traceback" in line:
        raise AssertionError(f"deliver exited {code}: {line!r}")


def main() -> None:
    import atheris

    with atheris.instrument_imports():
        import crtool.cli  # noqa: F401
        import crtool.delivery  # noqa: F401
        import crtool.envelope  # noqa: F401
        import crtool.message  # noqa: F401
        import crtool.policy  # noqa: F401
        import crtool.service  # noqa: F401
    setup()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--replay":
        # Replay corpus files without atheris (to check a crash found elsewhere).
        setup()
        for name in sys.argv[2:]:
            one_input(Path(name).read_bytes())
        print(f"replayed {len(sys.argv) - 2} inputs: all held")
    else:
        main()
    shutil.rmtree(HOME.parent, ignore_errors=True)
