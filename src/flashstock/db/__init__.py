"""The ledger database: engine factory and migrations.

PostgreSQL in production (``postgresql://`` URLs use psycopg 3), SQLite for the
embedded default; the same models, migrations and worker run on both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url

from flashstock.db.models import metadata

__all__ = ["check_url", "default_url", "make_engine", "metadata", "normalize_url", "upgrade"]

MIGRATIONS = Path(__file__).with_name("migrations")


def normalize_url(url: str) -> str:
    """Pick psycopg 3 for a bare ``postgresql://`` (or ``postgres://``) URL."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    return url


def check_url(url: str) -> None:
    """Refuse, with the password masked, a URL SQLAlchemy cannot read or reads wrongly.

    An unencoded ``@`` in the password ends it early: the rest becomes the host, which libpq
    then quotes in its error ("failed to resolve host '…'").
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from flashstock.redis_client import URLError

    forms = "the ledger is postgresql://USER@HOST/DB or sqlite:///PATH"
    if "://" not in url and "@" not in url:  # with an @, a password may have broken it
        raise URLError("database", url, forms)
    try:
        parsed = make_url(normalize_url(url))  # postgres:// and postgresql:// mean psycopg 3
    except (ArgumentError, ValueError):
        raise URLError("database", url) from None
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise URLError("database", url, forms)
    if parsed.get_driver_name() not in ("psycopg", "pysqlite"):
        raise URLError("database", url, f"{forms}; PostgreSQL through psycopg 3 (no +driver)")
    if parsed.host and "@" in parsed.host:
        raise URLError("database", url)


def default_url(data_dir: str | Path) -> str:
    """The embedded default's SQLite ledger under ``data_dir``."""
    return f"sqlite:///{Path(data_dir).resolve() / 'ledger.db'}"


# libpq connection parameters flashstock sets unless the URL says otherwise.
PG_CONNECT_DEFAULTS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # ms: data sent and not acknowledged by the peer
}


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for a ledger URL (``postgresql://…`` or ``sqlite:///path``).

    PostgreSQL connections are pinged on checkout, so a worker recovers by
    itself after the server restarts. SQLite gets real transactions (pysqlite
    otherwise defers ``BEGIN`` and lets a read see two snapshots), WAL so the
    API can read while the worker writes, and a busy timeout instead of
    ``database is locked`` errors.
    """
    url = normalize_url(url)
    check_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # IMMEDIATE would serialise readers too; a deferred BEGIN holds one snapshot.
            conn.exec_driver_sql("BEGIN")

        return engine
    if url.startswith("postgresql"):
        kwargs.setdefault("pool_pre_ping", True)
        # A server host that vanished mid-transaction (a failover, a dead machine) is
        # noticed in about a minute instead of waiting for an answer forever. Settings in
        # the URL's query (``?keepalives_idle=…``) take precedence.
        given = make_url(url).query
        args = kwargs.setdefault("connect_args", {})
        for name, value in PG_CONNECT_DEFAULTS.items():
            if name not in given:
                args.setdefault(name, value)
    return create_engine(url, **kwargs)


def _alembic_config(url: str | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str | Engine, revision: str = "head") -> None:
    """Run the migrations up to ``revision`` (no alembic.ini needed on disk)."""
    from alembic import command

    engine = url if isinstance(url, Engine) else make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        if not isinstance(url, Engine):
            engine.dispose()


def downgrade(url: str | Engine, revision: str) -> None:
    """Run the migrations down to ``revision`` (``"base"`` drops every table)."""
    from alembic import command

    engine = url if isinstance(url, Engine) else make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
    finally:
        if not isinstance(url, Engine):
            engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
