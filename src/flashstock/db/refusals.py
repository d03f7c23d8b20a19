"""What a PostgreSQL refusal means, said without the server's own text (which names hosts,
users and databases), and whether waiting can cure it.

A refused connection has no SQLSTATE in psycopg: its text is matched instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    sqlstate: str
    pattern: str
    meaning: str
    lasting: bool  # a setup mistake: retrying will not help


REFUSALS = (
    Refusal("3D000", r'FATAL: +database ".*" does not exist', "the database does not exist (createdb, then flashstock db upgrade)", True),
    Refusal("28P01", r"FATAL: +password authentication failed", "the password was refused", True),
    Refusal("28000", r'FATAL: +(no pg_hba\.conf entry|role ".*" does not exist)', "the server refused this user", True),
    Refusal("57P03", r"FATAL: +the database system is (starting up|shutting down)", "the server is starting up or shutting down", False),
    Refusal("53300", r"FATAL: +(sorry, )?too many clients", "the server has too many connections", False),
)  # fmt: skip


def refusal(exc: BaseException) -> Refusal | None:
    """The known refusal behind a SQLAlchemy error, or None (unreachable, or something else)."""
    orig = getattr(exc, "orig", None)
    state, text = getattr(orig, "sqlstate", None), str(orig or "")
    for r in REFUSALS:
        if state == r.sqlstate or (state is None and re.search(r.pattern, text)):
            return r
    return None
