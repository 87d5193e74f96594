"""The wheel carries the templates and the migrations, and works from anywhere.

Built from the checkout, installed (not editable) into a fresh virtual environment, and run
from a directory that is not the checkout, so nothing can be found through the source tree.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import CAPTURE_SENDMAIL, REPO, message, qmail_env


def run(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=True,
                          timeout=600, **kwargs)  # type: ignore[call-overload]


def test_wheel_installs_and_works_outside_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, REPO)
    [wheel] = dist.glob("crtool-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "crtool/templates/challenge.txt" in names
    assert "crtool/migrations/env.py" in names
    assert any(n.startswith("crtool/migrations/versions/0001") for n in names)
    assert "crtool/templates/digest.txt" in names and "crtool/templates/digest.html" in names
    assert any(n.endswith(".data/data/share/man/man1/crtool.1") for n in names), names

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", wheel)
    crtool = venv / "bin" / "crtool"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    user_home = tmp_path / "alice"
    user_home.mkdir()
    env = {"HOME": str(user_home), "PATH": "/usr/bin:/bin",
           "CRTOOL_TEST_OUTBOX": str(tmp_path / "outbox")}
    out = run(crtool, "init", "--address", "alice@example.test", "--sendmail",
              CAPTURE_SENDMAIL, cwd=elsewhere, env=env).stdout
    assert f"|{crtool} deliver" in out
    assert "(up to date)" in run(crtool, "db", "current", cwd=elsewhere, env=env).stdout

    # A challenge rendered from the template inside the installed package.
    deliver_env = qmail_env("bob@remote.test", "alice@example.test", user_home)
    deliver_env["CRTOOL_TEST_OUTBOX"] = env["CRTOOL_TEST_OUTBOX"]
    result = subprocess.run([crtool, "deliver"], input=message(), env=deliver_env,
                            cwd=user_home, capture_output=True, check=False)
    assert result.returncode == 99, result.stderr
    [sent] = (tmp_path / "outbox").glob("*.eml")
    assert b"alice-confirm-" in sent.read_bytes()
    installed = run(venv / "bin" / "python", "-c",
                    "import crtool.resources as r; print(r.shipped_dir('migrations'))",
                    cwd=elsewhere).stdout.strip()
    assert installed.startswith(str(venv))
    # crtool(1) where man finds it under the environment's prefix.
    assert (venv / "share" / "man" / "man1" / "crtool.1").read_text().startswith(".TH CRTOOL 1")
