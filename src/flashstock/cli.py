"""The ``flashstock`` command (SPEC §4). Thin: parsing and printing only; the work is elsewhere."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from flashstock.settings import Settings

app = typer.Typer(
    pretty_exceptions_show_locals=False,  # locals hold Settings, whose URLs may hold passwords
    add_completion=False,
    no_args_is_help=True,
    help="Inventory reservations for flash sales: never oversells, every change persisted.",
)
db_app = typer.Typer(no_args_is_help=True, help="The ledger database.")
app.add_typer(db_app, name="db")
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
app.add_typer(keys_app, name="keys")


def _log(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # its plugin set-up and each migration step, at every start
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _resolved(settings: Settings | None = None, *, migrate: bool = True) -> Settings:
    """Settings with both URLs filled (the embedded default when unset) and the ledger migrated."""
    from flashstock import embedded
    from flashstock.db import upgrade

    s = settings or Settings()
    if s.redis_url is None or s.database_url is None:
        try:
            emb = embedded.start(s)
        except embedded.ConfigurationError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(
            f"embedded default: Redis via {emb.kind}, ledger {emb.settings.database_url}", err=True
        )
        s = emb.settings
    _check_urls(s)
    if migrate and s.database_url and s.database_url.startswith("sqlite"):
        upgrade(s.database_url)
    return s


def _check_urls(s: Settings) -> None:
    """Exit 2 with one line (the URL redacted) when a URL cannot be parsed."""
    from flashstock.db import check_url
    from flashstock.redis_client import FAKE_URL, parse

    try:
        if s.redis_url and s.redis_url != FAKE_URL:
            parse(s.redis_url)
        if s.database_url:
            check_url(s.database_url)
    except ValueError as exc:  # URLError, or redis-py naming the schemes it takes
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


# How serve runs uvicorn; ``flashstock bench`` serves its app the same way.
UVICORN_OPTIONS: dict[str, Any] = {
    "log_level": "warning", "access_log": False, "loop": "uvloop", "http": "httptools",
}  # fmt: skip


def _default_help(what: str, field: str) -> str:
    """An option's help naming the setting that gives its default, and that setting's own."""
    return f"{what} (default: FLASHSTOCK_{field.upper()}, else {Settings.model_fields[field].default})."


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help=_default_help("Address to bind", "host"))] = None,
    port: Annotated[int | None, typer.Option(help=_default_help("Port to bind", "port"))] = None,
    workers: Annotated[
        int | None, typer.Option(help=_default_help("uvicorn worker processes", "workers"))
    ] = None,
    with_worker: Annotated[
        bool | None,
        typer.Option(help="Also run the ledger worker in this process (default: when embedded)."),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth", help="Serve a non-loopback address with no API keys (open)."
        ),
    ] = False,
) -> None:
    """Run the HTTP API."""
    import uvicorn

    _log()
    base = Settings()
    _check_access(base, host or base.host, insecure_no_auth)
    embedded_mode = base.redis_url is None or base.database_url is None
    s = _resolved(base)
    os.environ["FLASHSTOCK_REDIS_URL"] = s.redis_url or ""
    os.environ["FLASHSTOCK_DATABASE_URL"] = s.database_url or ""
    n = workers or s.workers
    if s.redis_url == "fakeredis://":
        n = 1  # an in-process Redis cannot be shared between processes
    bind_host, bind_port = host or s.host, port or s.port
    _check_port(bind_host, bind_port)
    _preflight()
    if with_worker if with_worker is not None else embedded_mode:
        _background_worker(s)
    metrics = None
    if n > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # /metrics then sums every worker process, not whichever one answered the scrape.
        import tempfile

        metrics = tempfile.TemporaryDirectory(prefix="flashstock-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics.name
    where = f"http://{bind_host}:{bind_port}"
    typer.echo(f"flashstock API on {where} ({n} worker{'s' if n > 1 else ''}; docs at {where}/docs)",
               err=True)  # fmt: skip
    try:
        uvicorn.run(
            "flashstock.api:create_app", factory=True, host=bind_host, port=bind_port,
            workers=n if n > 1 else None, **UVICORN_OPTIONS,
        )  # fmt: skip
    finally:
        if metrics is not None:  # the worker processes have stopped: their counters go too
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            metrics.cleanup()


def _check_port(host: str, port: int) -> None:
    """Exit 2 with one line when ``host:port`` cannot be listened on (in use, say)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None


def _preflight() -> None:
    """Start the app once here, as each worker process will, and exit 3 if it cannot.

    Its reason is then one line, not uvicorn's traceback; and with several workers
    uvicorn's supervisor stops when a worker fails to start, but exits 0, which a
    service manager would take for a clean stop.
    """
    from flashstock.api import create_app

    async def start() -> None:
        app = create_app()
        async with app.router.lifespan_context(app):
            pass

    try:
        asyncio.run(start())
    except Exception as exc:  # noqa: BLE001 - any reason the app cannot start
        typer.echo(f"error: the API cannot start: {exc}", err=True)
        raise typer.Exit(3) from None


def _check_access(s: Settings, host: str, insecure: bool) -> None:
    """Refuse to serve a reachable address with no API keys, unless told to."""
    from flashstock.auth import KeyConfigError, is_loopback, load_keys

    try:
        keys = load_keys(s.api_keys, s.api_keys_file)
    except KeyConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if keys or is_loopback(host):
        return
    if not insecure:
        typer.echo(
            f"error: no API keys are configured, so serving {host} would let anyone who can "
            "reach it reserve, count and import stock. Create keys with `flashstock keys create` "
            "and set FLASHSTOCK_API_KEYS or FLASHSTOCK_API_KEYS_FILE, bind 127.0.0.1, or pass "
            "--insecure-no-auth if something in front of flashstock already checks every caller.",
            err=True,
        )
        raise typer.Exit(2)
    typer.echo(f"warning: serving {host} with no API keys: the API is open to anyone", err=True)


def _background_worker(s: Settings) -> None:
    import threading

    from flashstock.worker import run_worker

    threading.Thread(target=run_worker, args=(s,), name="ledger-worker", daemon=True).start()


@app.command()
def worker(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Persist events to the ledger (write-behind) and expire holds whose TTL has passed."""
    from flashstock.worker import run_worker
    from flashstock.worker.guard import RedisBehindLedger

    _log(verbose)
    s = _resolved()
    _ledger_usable(s)
    _fewer_collections()
    try:
        run_worker(s)
    except RedisBehindLedger as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _ledger_usable(s: Settings) -> None:
    """Exit 2 in one line when the ledger cannot work until someone acts: the database is
    missing, refuses the user, or has no tables. An unreachable or starting server is an
    outage, which the worker waits out, as it does one that begins later."""
    from sqlalchemy import select
    from sqlalchemy.exc import OperationalError

    from flashstock.db import make_engine
    from flashstock.db.models import ledger_events
    from flashstock.db.refusals import refusal

    db = make_engine(s.database_url or "")
    try:
        with _reachable():  # no tables: says to run `flashstock db upgrade`
            try:
                with db.connect() as conn:
                    conn.execute(select(ledger_events.c.stream_ms).limit(1))
            except OperationalError as exc:
                if "no such table" in str(exc.orig):  # SQLite
                    raise
                found = refusal(exc)
                if found is None or not found.lasting:
                    return
                typer.echo(f"error: the ledger database refused: {found.meaning}", err=True)
                raise typer.Exit(2) from None
    finally:
        db.dispose()


def _fewer_collections() -> None:
    """Tune the garbage collector for the worker: it makes a few objects per event and keeps
    none past its batch, and with the default thresholds the collections they set off took
    half of its Python time (parsing and folding a batch: 25 µs an event, 12 without)."""
    import gc

    gc.freeze()  # what start-up made (modules, settings) is never scanned again
    gc.set_threshold(50_000, 20, 100)


@app.command()
def warm(
    file: Annotated[
        Path | None, typer.Argument(help="Stock file (CSV).", exists=True, dir_okay=False)
    ] = None,
    from_db: Annotated[
        bool, typer.Option("--from-db", help="Load levels from the ledger.")
    ] = False,
    format: Annotated[
        str | None, typer.Option(help="generic, shopify or woocommerce (default: detected).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change.")] = False,
    full: Annotated[
        bool, typer.Option("--full", help="With --from-db: the whole store, as `rebuild`.")
    ] = False,
    everything: Annotated[
        bool, typer.Option("--all", help="Print every note and change, not the first ones.")
    ] = False,
) -> None:
    """Load stock levels and policies into Redis (never touches reserved or committed)."""
    from flashstock.errors import FlashstockError

    if file is None and not from_db:
        raise typer.BadParameter("give a stock FILE to load, or --from-db")
    if file is not None and from_db:
        raise typer.BadParameter("give a FILE or --from-db, not both")
    if full:
        if not from_db or dry_run:
            raise typer.BadParameter("--full goes with --from-db, without --dry-run")
        rebuild()
        return
    s = _resolved()
    try:
        with _reachable():
            report = asyncio.run(_warm(s, file, from_db, format, dry_run))
    except FlashstockError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        errors = exc.details.get("errors", [])
        if len(errors) == 1 and errors[0]["message"] in exc.message:
            errors = []  # the message is that one error
        for e in errors:
            typer.echo(f"  line {e['line']}" + (f" [{e['column']}]" if e.get("column") else "")
                       + f": {e['message']}", err=True)  # fmt: skip
        raise typer.Exit(2) from exc
    _print_warm(report, everything)


async def _warm(s: Settings, file: Path | None, from_db: bool, fmt: str | None, dry: bool) -> Any:
    from flashstock.engine import Engine
    from flashstock.redis_client import create_async
    from flashstock.warm import warm_bytes, warm_from_db

    client = create_async(s.redis_url or "", "warm")
    try:
        engine = Engine(client, s)
        if file is not None:
            return await warm_bytes(engine, file.read_bytes(), format=fmt, dry_run=dry)
        return await warm_from_db(engine, s.database_url or "", dry_run=dry)
    finally:
        await client.aclose()


def _print_warm(r: Any, everything: bool = False) -> None:
    verb = "would change" if r.dry_run else "changed"
    typer.echo(f"format: {r.format}")
    typer.echo(f"rows loaded: {r.rows}  levels {verb}: {r.levels_changed}  "
               f"unchanged: {r.levels_unchanged}  policies: {r.policies}  skipped: {len(r.skipped)}")  # fmt: skip
    reasons: dict[str, int] = {}
    for sk in r.skipped:
        reasons[sk["reason"]] = reasons.get(sk["reason"], 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        typer.echo(f"  skipped {n:>5}: {reason}")
    _echo_some([f"  note: {note}" for note in r.notes], 20, "notes", everything)
    if r.dry_run:
        _echo_some(
            [f"  {c.sku} @ {c.location}: on_hand "
             f"{'new' if c.on_hand_before is None else c.on_hand_before} -> {c.on_hand_after}"
             for c in r.changes],
            50, "changes", everything,
        )  # fmt: skip


def _echo_some(lines: list[str], first: int, what: str, everything: bool) -> None:
    shown = lines if everything else lines[:first]
    for line in shown:
        typer.echo(line)
    if len(lines) > len(shown):
        typer.echo(f"  … and {len(lines) - len(shown)} more {what} (--all prints them)")


@app.command()
def reconcile(
    fix: Annotated[
        bool, typer.Option("--fix", help="Apply the ledger's truth to Redis where they differ.")
    ] = False,
) -> None:
    """Compare Redis with the ledger; exit 0 when they agree, 1 with the differences."""
    from flashstock import reconcile as rec
    from flashstock.db import make_engine
    from flashstock.redis_client import create_sync

    s = _resolved()
    client, db = create_sync(s.redis_url or "", "reconcile"), make_engine(s.database_url or "")
    with _reachable():
        _reconcile(rec, client, db, s, fix)


def _reconcile(rec: Any, client: Any, db: Any, s: Settings, fix: bool) -> None:
    if fix:
        report = rec.fix(client, db, s)
        _print_lost(report.lost)
        if report.restored is not None:
            typer.echo("restored from the ledger: " + report.restored.lines()[0])
        for d in report.corrected:
            typer.echo(f"  corrected: {d}")
        for d in report.skipped:
            typer.echo(f"  left alone (not in the ledger): {d}")
        diffs = report.remaining
    else:
        _print_lost(rec.lost_from_redis(client, db, s))
        diffs = rec.reconcile(client, db, s)
    if not diffs and not (not fix and rec.lost_from_redis(client, db, s)):
        typer.echo("reconcile: Redis and the ledger agree")
        if waiting := rec.not_yet_persisted(client, s):
            typer.echo(
                f"  counting {waiting} event(s) not yet in the ledger: they are still in the "
                "stream, waiting for `flashstock worker` (is one running?)"
            )
        return
    typer.echo(f"reconcile: {len(diffs)} difference(s)")
    for d in diffs:
        typer.echo(f"  {d}")
    raise typer.Exit(1)


@contextmanager
def _reachable() -> Iterator[None]:
    """Exit 2 with one line, not a traceback, when Redis or the database cannot be reached
    or refuses the credentials (exit 1 stays "the comparison found differences").

    The line carries the driver's reason (host and port, "certificate verify failed",
    "password authentication failed for user …"): neither redis-py nor libpq puts a
    password in it, and a URL that would make them quote one is refused before (URLError).
    """
    import redis
    from sqlalchemy.exc import OperationalError, ProgrammingError

    no_tables = (
        "error: the ledger database has no flashstock tables yet: run `flashstock db upgrade`"
    )
    try:
        yield
    except ProgrammingError as exc:  # PostgreSQL: undefined table
        if getattr(exc.orig, "sqlstate", None) != "42P01":
            raise
        typer.echo(no_tables, err=True)
        raise typer.Exit(2) from None
    except redis.AuthenticationError as exc:
        typer.echo(
            f"error: Redis refused the credentials of FLASHSTOCK_REDIS_URL ({exc})", err=True
        )
        raise typer.Exit(2) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        typer.echo(f"error: cannot reach Redis ({type(exc).__name__}: {exc})", err=True)
        raise typer.Exit(2) from None
    except OperationalError as exc:
        if "no such table" in str(exc.orig):  # SQLite
            typer.echo(no_tables, err=True)
            raise typer.Exit(2) from None
        reason = f"{type(exc.orig).__name__}: {' '.join(str(exc.orig).split())}"
        typer.echo(f"error: cannot reach the ledger database ({reason})", err=True)
        raise typer.Exit(2) from None


def _print_lost(lost: list[Any]) -> None:
    if not lost:
        return
    typer.echo(
        f"{len(lost)} event(s) in the ledger are missing from Redis (lost by Redis after the "
        "worker persisted them; `reconcile --fix` restores them):"
    )
    for e in lost[:200]:
        typer.echo(f"  {e}")
    if len(lost) > 200:
        typer.echo(f"  … and {len(lost) - 200} more")


@app.command()
def rebuild(
    force: Annotated[
        bool, typer.Option("--force", help="Write over a partition that holds data.")
    ] = False,
) -> None:
    """Restore an empty Redis from the ledger: levels, policies, holds, orders, counters."""
    from flashstock.db import make_engine
    from flashstock.engine import Engine
    from flashstock.rebuild import RebuildRefused
    from flashstock.rebuild import rebuild as run
    from flashstock.redis_client import create_async

    s = _resolved()

    async def go() -> Any:
        client = create_async(s.redis_url or "", "rebuild")
        db = make_engine(s.database_url or "")
        try:
            return await run(Engine(client, s), db, force=force)
        finally:
            await client.aclose()
            db.dispose()

    try:
        with _reachable():
            report = asyncio.run(go())
    except RebuildRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for line in report.lines():
        typer.echo(line)


@app.command()
def demo(
    skus: Annotated[int, typer.Option(help="Hot SKUs on sale.")] = 3,
    stock: Annotated[int, typer.Option(help="Units of each hot SKU.")] = 50,
    buyers: Annotated[int, typer.Option(help="Concurrent buyers.")] = 400,
) -> None:
    """Run a flash sale end to end on a private embedded store and print a report."""
    from flashstock.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    ok = run_demo(hot_skus=skus, stock=stock, buyers=buyers, echo=typer.echo)
    raise typer.Exit(0 if ok else 1)


@keys_app.command("create")
def keys_create(
    key_id: Annotated[str, typer.Argument(help="The key's id: 1-32 of a-z, 0-9 and -.")],
    scope: Annotated[
        list[str], typer.Option("--scope", "-s", help="checkout, ops or read; repeat for several.")
    ],
) -> None:
    """Make a key: prints the token once (give it to the client) and the entry to configure."""
    from flashstock.auth import KeyConfigError, new_key

    try:
        token, entry = new_key(key_id, scope)
    except KeyConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo("token (shown once; flashstock keeps only its hash):")
    typer.echo(token)
    typer.echo("entry for FLASHSTOCK_API_KEYS or the FLASHSTOCK_API_KEYS_FILE file:")
    typer.echo(entry)


@app.command()
def bench(
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Sections: http, ceiling, postgres, sold_out, ledger, shape (default all)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Directory for results (default bench-results/<time>).")
    ] = None,
    duration: Annotated[float, typer.Option(help="Seconds per load run.")] = 5.0,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds per comparison.")] = 3,
    connections: Annotated[int, typer.Option(help="HTTP clients for the rate runs.")] = 64,
    workers: Annotated[int, typer.Option(help="uvicorn workers of the measured server.")] = 2,
    generator: Annotated[str, typer.Option(help="Load generator: auto, wrk or python.")] = "auto",
    pg: Annotated[
        str, typer.Option(help="PostgreSQL admin URL (a database is created and dropped).")
    ] = "postgresql://postgres@127.0.0.1:5432/postgres",
) -> None:
    """Measure flashstock side by side (docs/benchmarks.md); write JSON, a plot and a table."""
    from datetime import UTC, datetime

    from flashstock.bench.runner import SECTIONS, run

    logging.basicConfig(level=logging.WARNING)
    sections = tuple(only) if only else SECTIONS
    if bad := [x for x in sections if x not in SECTIONS]:
        raise typer.BadParameter(f"unknown section(s) {', '.join(bad)}")
    target = out or Path("bench-results") / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run(
        target, sections=sections, duration=duration, rounds=rounds, connections=connections,
        workers=workers, generator=generator, pg_admin_url=pg,
        command=" ".join(["flashstock bench", *sys.argv[2:]]), echo=typer.echo,
    )  # fmt: skip


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the ledger's tables."""
    from flashstock.db import current_revision, make_engine, upgrade

    s = _resolved(migrate=False)
    with _reachable():
        engine = make_engine(s.database_url or "")
        try:
            before = current_revision(engine)
            upgrade(engine)
            after = current_revision(engine)
        finally:
            engine.dispose()
    if before == after:
        typer.echo(f"ledger schema is up to date (revision {after})")
    else:
        typer.echo(f"ledger schema migrated from {before or 'empty'} to revision {after}")


def main() -> None:
    from pydantic import ValidationError

    try:
        app(prog_name="flashstock")
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        for e in exc.errors(include_url=False):
            if not e["loc"]:  # a rule between settings: its message names them
                typer.echo(f"error: {e['msg'].removeprefix('Value error, ')}", err=True)
                continue
            name = "FLASHSTOCK_" + "_".join(str(x) for x in e["loc"]).upper()
            typer.echo(f"error: {name}: {e['msg']} (got {e.get('input')!r})", err=True)
        sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
