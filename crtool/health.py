"""`crtool health`: is the hub's LMTP server answering and its database reachable?

For a supervisor's or monitor's check: it speaks LMTP to the server as Postfix would (greeting,
LHLO, QUIT; no mail) and runs one trivial query on the shared database. None means healthy;
otherwise one line says what failed.
"""

from __future__ import annotations

from crtool.owners import System


def check(system: System, target: str, timeout: float) -> str | None:
    return lmtp_problem(target, timeout) or database_problem(system)


def lmtp_problem(target: str, timeout: float) -> str | None:
    import smtplib

    from crtool.onward import split_target

    try:
        host, port = split_target(target)
        with smtplib.LMTP(host, port, timeout=timeout) as client:
            code, said = client.ehlo()  # smtplib.LMTP sends LHLO here
            if code != 250:
                return f"lmtp {target}: LHLO answered {code} {said.decode(errors='replace')}"
    except ValueError as error:
        return f"lmtp {target}: {error}"
    except (smtplib.SMTPException, OSError) as error:
        return f"lmtp {target}: {error or type(error).__name__}"
    return None


def database_problem(system: System) -> str | None:
    from sqlalchemy import text

    from crtool.delivery import describe
    from crtool.store.engine import make_engine

    try:
        engine = make_engine(system.database_url, timeout=system.database_timeout)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as error:  # noqa: BLE001 - any failure is the one line to print
        return f"database: {describe(error)}"
    return None
