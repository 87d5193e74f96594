"""How many people a new owner would ask to confirm: a mail corpus replayed after `learn`.

A directory of messages (one file each) or an mbox is split in two, in its own order: the first
part (`--learn-fraction`, default one half) is what the owner already has, and `crtool learn
--lists --sent` runs on it (and, with `--from`, plain `crtool learn` too); then every message
of the corpus is decided as a delivery would decide it now (`crtool/simulate.py`, read-only).

Printed, before learning and after: the fraction of ham senders challenged (distinct senders of
the messages that are not list mail, challenged at least once) and the fraction of list
messages (a List-Id) delivered. A corpus of ham only is assumed: spam would count as "ham
senders challenged", which is what a challenge is for.

`python -m bench.replay DIR_OR_MBOX [--learn-fraction 0.5] [--from]`
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.homes import CRTOOL, OWNER


def _as_mbox(source: Path, target: Path, start: int, stop: int | None) -> int:
    """Messages [start:stop] of a directory of message files, written as an mbox."""
    files = sorted(p for p in source.iterdir() if p.is_file())[start:stop]
    with open(target, "wb") as out:
        for path in files:
            data = path.read_bytes().replace(b"\r\n", b"\n")
            if data.startswith(b"From "):
                data = data.split(b"\n", 1)[1]
            body = b"\n".join(b">" + line if line.startswith(b"From ") else line
                              for line in data.split(b"\n"))
            out.write(b"From corpus@replay.test Thu Jan  1 00:00:00 2026\n" + body.rstrip(b"\n")
                      + b"\n\n")
    return len(files)


def measure(home: Path, mbox: Path) -> dict[str, float]:
    from crtool import policy, service, simulate, sources
    from crtool.config import load_settings
    from crtool.message import parse_head
    from crtool.store.engine import transaction

    box = service.open_mailbox(load_settings(home))
    engine = box.engine
    ham: dict[str, bool] = {}
    list_total = list_delivered = 0
    with transaction(engine, write=False) as session:
        for item in sources.messages(mbox):
            if not isinstance(item, sources.Mail):
                continue
            facts = parse_head(item.head)
            verdict = simulate.decide(box, session, item.head)
            if facts.has("list-id"):
                list_total += 1
                list_delivered += verdict.action is policy.Action.ACCEPT
                continue
            sender = simulate.envelope_sender(facts).lower()
            ham[sender] = ham.get(sender, False) or verdict.action is policy.Action.CHALLENGE
    engine.dispose()
    return {"ham_senders": len(ham), "ham_senders_challenged": sum(ham.values()),
            "ham_challenged_fraction": round(sum(ham.values()) / max(len(ham), 1), 3),
            "list_messages": list_total, "list_delivered": list_delivered,
            "list_delivered_fraction": round(list_delivered / max(list_total, 1), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__)
    parser.add_argument("corpus", type=Path, help="a directory of message files")
    parser.add_argument("--learn-fraction", type=float, default=0.5)
    parser.add_argument("--from", dest="from_", action="store_true",
                        help="also learn the From: addresses of the first part")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="crtool-replay-"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root)}
    home = root / "home"
    subprocess.run([CRTOOL, "--home", str(home), "init", "--address", OWNER, "--maildir",
                    str(root / "Maildir"), "--sendmail", "/bin/true"], check=True,
                   capture_output=True, env=env)
    total = len([p for p in args.corpus.iterdir() if p.is_file()])
    cut = int(total * args.learn_fraction)
    learnt = root / "learn.mbox"
    whole = root / "all.mbox"
    _as_mbox(args.corpus, learnt, 0, cut)
    _as_mbox(args.corpus, whole, 0, None)
    before = measure(home, whole)
    commands = [["learn", "--lists", "--sent", str(learnt)]]
    if args.from_:
        commands.append(["learn", str(learnt)])
    for command in commands:
        out = subprocess.run([CRTOOL, "--home", str(home), *command], capture_output=True,
                             env=env, check=False)
        print(f"$ crtool {' '.join(command[:-1])} <first {cut} of {total}>\n"
              + out.stdout.decode())
    after = measure(home, whole)
    print(f"corpus: {args.corpus} ({total} messages); learnt from the first {cut}")
    for name, figures in (("before learn", before), ("after learn", after)):
        print(f"{name:13} ham senders challenged {figures['ham_senders_challenged']}/"
              f"{figures['ham_senders']} ({figures['ham_challenged_fraction']:.1%}); list "
              f"messages delivered {figures['list_delivered']}/{figures['list_messages']} "
              f"({figures['list_delivered_fraction']:.1%})")
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
