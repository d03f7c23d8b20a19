"""Secrets and transport against real servers this module starts itself.

* a private ``redis-server --requirepass``: the API (with its multiplexed script
  connection), the worker and the CLI on ``redis://:<password>@``; a wrong
  password is a clear error that never shows either password;
* a private TLS-only ``redis-server`` (no plain port at all) with a throwaway CA
  made by ``openssl``: ``flashstock serve --with-worker`` itself, over
  ``rediss://`` with ``ssl_cert_reqs=required``; an unknown CA is refused at once;
* a private PostgreSQL cluster with ``ssl=on`` that refuses unencrypted TCP and
  wants a password: the ledger on ``sslmode=require`` / ``verify-full``, checked
  in ``pg_stat_ssl``; a wrong password or CA is a clear error.

Passwords are looked for everywhere they could leak: log records, exception
messages, ``/readyz``, HTTP errors, the CLI's stdout and stderr, ``serve``'s output.
Nothing here touches the shared Redis or PostgreSQL.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2 as httpx
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from psycopg import sql
from redis_server import RedisServer, free_port
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from support import REQUIRE_SERVICES, unique_prefix
from typer.testing import CliRunner

from flashstock.api import create_app
from flashstock.cli import app as cli
from flashstock.db import make_engine, upgrade
from flashstock.redis_client import Multiplexed, create_sync
from flashstock.settings import Settings
from flashstock.worker import run_worker

pytestmark = [pytest.mark.redis]

SECRET = "Tr4nsp0rt-s3cret"  # the servers' password
WRONG = "Wr0ng-guess-77"  # what a misconfigured client sends
HIDDEN = (SECRET, WRONG)


def _missing(what: str) -> None:
    """A tool this module needs is absent: a skip, or a failure where CI insists."""
    if REQUIRE_SERVICES:
        pytest.fail(what)
    pytest.skip(what)


def _assert_hidden(*texts: str) -> None:
    for t in texts:
        for secret in HIDDEN:
            assert secret not in t, f"{secret!r} shown in: {t[:2000]}"


def _wait(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


# -- certificates ----------------------------------------------------------------------------


class Certs:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.ca, self.cert, self.key = d / "ca.crt", d / "server.crt", d / "server.key"
        self.other_ca = d / "other-ca.crt"  # a CA that signed nothing of ours


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throwaway CA, a server certificate it signs (localhost, 127.0.0.1), another CA."""
    if shutil.which("openssl") is None:
        _missing("no openssl to make test certificates")
    c = Certs(tmp_path_factory.mktemp("certs"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=c.dir, check=True, capture_output=True)

    for name, cn in (("ca", "flashstock test CA"), ("other-ca", "someone else's CA")):
        openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt",
                "-days", "2", "-subj", f"/CN={cn}")  # fmt: skip
    (c.dir / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return c


# -- private Redis servers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pw_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Plain TCP, ``requirepass``."""
    server = RedisServer(tmp_path_factory.mktemp("pw-redis"), appendfsync=None, password=SECRET)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[RedisServer]:
    """TLS only (``--port 0``), ``requirepass`` too."""
    server = RedisServer(
        tmp_path_factory.mktemp("tls-redis"), appendfsync=None, password=SECRET,
        tls=(certs.cert, certs.key, certs.ca),
    )  # fmt: skip
    try:
        server.start(timeout=10)
    except RuntimeError as exc:
        log = (server.dir / "redis.log").read_text(errors="replace")
        server.stop()
        if "tls" in log.lower() and (
            "not supported" in log.lower() or "bad directive" in log.lower()
        ):
            _missing(f"{server.binary} was built without TLS: {log.strip().splitlines()[-1]}")
        raise exc
    yield server
    server.stop()


def _tls_url(server: RedisServer, ca: Path, password: str = SECRET) -> str:
    return (f"rediss://:{password}@localhost:{server.port}/0"
            f"?ssl_ca_certs={ca}&ssl_cert_reqs=required")  # fmt: skip


def _pw_url(server: RedisServer, password: str = SECRET) -> str:
    return f"redis://:{password}@127.0.0.1:{server.port}/0"


# -- a private PostgreSQL cluster with ssl=on ------------------------------------------------


class PgServer:
    """initdb + pg_ctl in a temp dir: TCP only with TLS and a password, the socket trusted."""

    def __init__(self, bindir: Path, certs: Certs, user: str | None) -> None:
        self.bindir = bindir
        self.user = user  # whom to run the server as (initdb refuses root)
        self.dir = Path(tempfile.mkdtemp(prefix="flashstock-pg-"))  # not tmp_path: the server
        self.data = self.dir / "data"  # user must be able to enter it
        self.port = free_port()
        shutil.copy(certs.cert, self.dir / "server.crt")
        shutil.copy(certs.key, self.dir / "server.key")
        (self.dir / "pwfile").write_text(SECRET + "\n")
        os.chmod(self.dir / "server.key", 0o600)
        if self.user:
            for p in (self.dir, *self.dir.iterdir()):
                shutil.chown(p, self.user)

    def run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "-N", "--no-instructions",
                 "--auth-local=trust", "--auth-host=scram-sha-256",
                 f"--pwfile={self.dir / 'pwfile'}")  # fmt: skip
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostnossl all all all reject\n"
        )
        opts = (f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.dir} -c ssl=on "
                f"-c ssl_cert_file={self.dir / 'server.crt'} -c ssl_key_file={self.dir / 'server.key'} "
                "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")  # fmt: skip
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "30",
                 "-o", opts, "start")  # fmt: skip

    def stop(self) -> None:
        try:
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def admin(self) -> psycopg.Connection[Any]:
        """Over the unix socket, where no TLS is needed: what the tests check with."""
        return psycopg.connect(host=str(self.dir), port=self.port, user="postgres",
                               dbname="postgres", autocommit=True)  # fmt: skip

    def url(self, db: str, password: str = SECRET, **query: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{db}" + (
            f"?{q}" if q else ""
        )


def _pg_bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def pg_tls(certs: Certs) -> Iterator[PgServer]:
    bindir = _pg_bindir()
    if bindir is None:
        _missing("no PostgreSQL server binaries (initdb) for a private ssl=on cluster")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            _missing("tests run as root and there is no postgres user to run initdb as")
    server = PgServer(bindir, certs, user)
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        log = server.dir / "log"
        detail = log.read_text()[-2000:] if log.exists() else exc.stderr.decode(errors="replace")
        server.stop()
        raise RuntimeError(f"private PostgreSQL did not start:\n{detail}") from exc
    yield server
    server.stop()


def _new_db(pg: PgServer) -> str:
    name = unique_prefix()
    with pg.admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _ssl_of_clients(pg: PgServer, db: str) -> list[tuple[bool, str]]:
    """(ssl, TLS version) of every connection to ``db`` (the checker's own uses the socket)."""
    with pg.admin() as conn:
        return conn.execute(
            "SELECT s.ssl, coalesce(s.version, '') FROM pg_stat_ssl s "
            "JOIN pg_stat_activity a USING (pid) WHERE a.datname = %s AND a.pid <> pg_backend_pid()",
            (db,),
        ).fetchall()


def _ledger_types(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT type FROM ledger_events ORDER BY id"))]
    finally:
        engine.dispose()


# -- the worker in a thread, as `serve --with-worker` runs it ---------------------------------


class WorkerThread:
    def __init__(self, settings: Settings) -> None:
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=run_worker, args=(settings, self.stop_event), daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


def _settings(redis_url: str, database_url: str, **kw: Any) -> Settings:
    return Settings(key_prefix=unique_prefix(), redis_url=redis_url, database_url=database_url,
                    worker_block_ms=20, reconcile_interval_seconds=0, **kw)  # fmt: skip


def _cli_env(monkeypatch: pytest.MonkeyPatch, s: Settings) -> None:
    monkeypatch.setenv("FLASHSTOCK_REDIS_URL", s.redis_url or "")
    monkeypatch.setenv("FLASHSTOCK_DATABASE_URL", s.database_url or "")
    monkeypatch.setenv("FLASHSTOCK_KEY_PREFIX", s.key_prefix)


def _sell(client: httpx.Client | TestClient, sku: str = "A") -> str:
    """Count 5 units, hold 2, commit them: three events. Returns the order id."""
    r = client.put(f"/v1/stock/{sku}/default", json={"on_hand": 5})
    assert r.status_code == 200, r.text
    r = client.post("/v1/reservations", json={"items": [{"sku": sku, "quantity": 2}]})
    assert r.status_code == 201, r.text
    rid = r.json()["reservation_id"]
    r = client.post(f"/v1/reservations/{rid}/commit", json={"order_id": f"o-{rid}"})
    assert r.status_code in (200, 201), r.text
    return f"o-{rid}"


# -- Redis with a password -------------------------------------------------------------------


def test_api_worker_and_cli_work_on_a_password_protected_redis(
    pw_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    s = _settings(_pw_url(pw_redis), f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(s.database_url or "")
    with TestClient(create_app(s)) as api:
        scripts = api.app.state.flashstock.engine.redis  # type: ignore[attr-defined]
        assert isinstance(scripts, Multiplexed)  # the pipelined connection sent AUTH itself
        _sell(api)
        assert api.portal.call(scripts.connection_id) > 0
        r = api.get("/readyz")
        assert r.status_code == 200 and r.json()["redis"] == "ok"
    worker = WorkerThread(s)
    try:
        types = _wait(lambda: len(t := _ledger_types(s.database_url or "")) >= 3 and t,
                      what="the worker to drain")  # fmt: skip
    finally:
        worker.stop()
    assert types[:3] == ["counted", "reserved", "committed"]
    _cli_env(monkeypatch, s)
    r = CliRunner().invoke(cli, ["reconcile"])
    assert r.exit_code == 0 and "agree" in r.output, r.output
    _assert_hidden(r.output, caplog.text)


def test_a_wrong_redis_password_is_clear_and_shown_nowhere(
    pw_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    s = _settings(_pw_url(pw_redis, WRONG), f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(s.database_url or "")
    admin = pw_redis.client()
    before = admin.info("clients")["connected_clients"]
    with TestClient(create_app(s)) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["redis"] == "unreachable: AuthenticationError"
        bodies = [ready.text]
        for _ in range(30):
            r = api.post("/v1/reservations", json={"items": [{"sku": "A", "quantity": 1}]})
            assert r.status_code == 503 and r.json()["error"] == "unavailable"
            bodies.append(r.text)
        # Each refused request must not leave a connection behind (the multiplexed one
        # used to stay open after its AUTH was refused: one more per request).
        assert admin.info("clients")["connected_clients"] <= before + 3
    _assert_hidden(*bodies)
    worker = WorkerThread(s)
    _wait(lambda: "AuthenticationError" in caplog.text or "invalid username-password" in caplog.text,
          what="the worker to log the refusal")  # fmt: skip
    worker.stop()
    _cli_env(monkeypatch, s)
    stock = tmp_path / "stock.csv"
    stock.write_text("sku,location,on_hand\nA,default,3\n")
    for args in (["reconcile"], ["rebuild"], ["warm", str(stock)]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2, (args, r.output)
        assert "Redis refused the credentials" in r.output and "Traceback" not in r.output, r.output
        _assert_hidden(r.output, str(r.exception))
    _assert_hidden(caplog.text)


# -- Redis over TLS --------------------------------------------------------------------------


@pytest.mark.postgres
def test_serve_with_worker_over_tls_redis_and_postgresql_verify_full(
    tls_redis: RedisServer, pg_tls: PgServer, certs: Certs, tmp_path: Path
) -> None:
    """``flashstock serve`` as deployed: rediss:// with a password and certificate checks,
    the ledger on PostgreSQL with sslmode=verify-full; the background worker drains."""
    db = _new_db(pg_tls)
    pg_url = pg_tls.url(db, sslmode="verify-full", sslrootcert=str(certs.ca))
    env = dict(os.environ, FLASHSTOCK_REDIS_URL=_tls_url(tls_redis, certs.ca),
               FLASHSTOCK_DATABASE_URL=pg_url, FLASHSTOCK_KEY_PREFIX=unique_prefix(),
               FLASHSTOCK_WORKER_BLOCK_MS="20")  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    up = subprocess.run([sys.executable, "-m", "flashstock.cli", "db", "upgrade"], env=env,
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert up.returncode == 0, up.stderr
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flashstock.cli", "serve", "--port", str(port),
             "--workers", "2", "--with-worker"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            def ready() -> bool:
                assert proc.poll() is None, log.read_text()
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.HTTPError:
                    return False

            _wait(ready, timeout=30, what="serve to be ready")
            for sku in ("A", "B", "C", "D"):  # over both uvicorn workers, most likely
                _sell(client, sku)
            types = _wait(lambda: len(t := _ledger_types(pg_url)) >= 12 and t,
                          what="the worker to drain")  # fmt: skip
            assert sorted(set(types)) == ["committed", "counted", "reserved"]
            # Every connection of serve's worker and API to the ledger is encrypted.
            conns = _ssl_of_clients(pg_tls, db)
            assert conns and all(ssl and version.startswith("TLS") for ssl, version in conns)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    output = log.read_text()
    assert "Traceback" not in output, output
    _assert_hidden(output, up.stdout, up.stderr)


def test_tls_redis_refuses_an_unknown_ca_at_once(
    tls_redis: RedisServer, certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    port = tls_redis.port
    refused = {
        "someone else's CA": _tls_url(tls_redis, certs.other_ca),
        "the system CAs only": f"rediss://:{SECRET}@localhost:{port}/0?ssl_cert_reqs=required",
        "plain TCP to the TLS port": f"redis://:{SECRET}@127.0.0.1:{port}/0",
    }
    for why, url in refused.items():
        start = time.monotonic()
        with pytest.raises(redis.ConnectionError) as exc:
            create_sync(url, "test").ping()
        assert time.monotonic() - start < 5, why  # refused, not hung
        if why != "plain TCP to the TLS port":
            assert "CERTIFICATE_VERIFY_FAILED" in str(exc.value), why
        _assert_hidden(str(exc.value))
    # The right CA works (the fixture's own URL trusts it, without ssl_cert_reqs).
    assert create_sync(_tls_url(tls_redis, certs.ca), "test").ping()
    s = _settings(refused["someone else's CA"], f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(s.database_url or "")
    with TestClient(create_app(s)) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] == "unreachable: ConnectionError"
        r = api.post("/v1/reservations", json={"items": [{"sku": "A", "quantity": 1}]})
        assert r.status_code == 503
        _assert_hidden(ready.text, r.text)
    _cli_env(monkeypatch, s)
    r = CliRunner().invoke(cli, ["reconcile"])
    assert r.exit_code == 2 and "certificate verify failed" in r.output, r.output
    _assert_hidden(r.output, caplog.text)


# -- PostgreSQL sslmode ----------------------------------------------------------------------


@pytest.mark.postgres
def test_postgresql_ledger_with_sslmode_is_encrypted_and_refusals_are_clear(
    pg_tls: PgServer, pw_redis: RedisServer, certs: Certs, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    db = _new_db(pg_tls)
    url = pg_tls.url(db, sslmode="require")
    s = _settings(_pw_url(pw_redis), url)
    _cli_env(monkeypatch, s)
    r = CliRunner().invoke(cli, ["db", "upgrade"])
    assert r.exit_code == 0, r.output
    with TestClient(create_app(s)) as api:
        _sell(api)
        assert api.get("/readyz").json()["database"] == "ok"
        worker = WorkerThread(s)
        try:
            _wait(lambda: len(_ledger_types(url)) >= 3, what="the worker to drain")
            conns = _ssl_of_clients(pg_tls, db)  # the API's and the worker's pools
            assert len(conns) >= 2 and all(ssl for ssl, _ in conns), conns
        finally:
            worker.stop()
    assert CliRunner().invoke(cli, ["reconcile"]).exit_code == 0
    # The server takes no unencrypted TCP at all, so "require" was not a formality.
    plain = make_engine(pg_tls.url(db, sslmode="disable"))
    with pytest.raises(OperationalError, match="no encryption") as exc:
        plain.connect()
    plain.dispose()
    _assert_hidden(str(exc.value))

    bad = {
        "a wrong password": (pg_tls.url(db, WRONG, sslmode="require"), "password authentication failed"),
        "someone else's CA": (pg_tls.url(db, sslmode="verify-full", sslrootcert=str(certs.other_ca)),
                              "certificate verify failed"),
    }  # fmt: skip
    ready_says = {"a wrong password": "the password was refused",
                  "someone else's CA": "unreachable: OperationalError"}  # fmt: skip
    for why, (bad_url, says) in bad.items():
        monkeypatch.setenv("FLASHSTOCK_DATABASE_URL", bad_url)
        for args in (["db", "upgrade"], ["reconcile"]):
            r = CliRunner().invoke(cli, args)
            assert r.exit_code == 2, (why, args, r.output)
            assert "cannot reach the ledger database" in r.output and says in r.output, r.output
            assert "Traceback" not in r.output
            _assert_hidden(r.output, str(r.exception))
        with TestClient(create_app(s.model_copy(update={"database_url": bad_url}))) as api:
            ready = api.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["database"] == ready_says[why]
            _assert_hidden(ready.text)
    _assert_hidden(caplog.text)


# -- passwords with URL delimiters -----------------------------------------------------------

ODD = "Od/d#pa?ss@wo:rd%x"  # every character that must be percent-encoded in a URL


@pytest.mark.postgres
def test_percent_encoded_passwords_with_delimiters_work(
    pw_redis: RedisServer, pg_tls: PgServer
) -> None:
    pw_redis.client().acl_setuser(
        "odd", enabled=True, passwords=[f"+{ODD}"], keys=["*"], commands=["+@all"]
    )
    with pg_tls.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE odd LOGIN SUPERUSER PASSWORD {}").format(ODD))
    enc = quote(ODD, safe="")
    db = _new_db(pg_tls)
    pg_url = f"postgresql://odd:{enc}@127.0.0.1:{pg_tls.port}/{db}?sslmode=require"
    s = _settings(f"redis://odd:{enc}@127.0.0.1:{pw_redis.port}/0", pg_url)
    upgrade(pg_url)
    with TestClient(create_app(s)) as api:
        _sell(api)  # through the multiplexed connection, which sends AUTH odd <password>


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{ODD}@127.0.0.1:6379/0",
        f"redis://app:{ODD}@127.0.0.1:6379/0",
        f"rediss://:{ODD}@cache.internal:6380/0?ssl_cert_reqs=required",
        f"postgresql://fs:{ODD}@127.0.0.1:5432/flashstock?sslmode=require",
        "postgresql://fs:Od@d:5x@127.0.0.1:5432/flashstock",
        f"postgresql//fs:{ODD}@127.0.0.1:5432/flashstock",  # no "://": not even a URL
    ],
)
def test_an_unencoded_password_is_refused_without_quoting_it(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """redis-py and libpq would quote part of it ("port could not be cast … 'Od'", "cannot
    resolve host 'pa?ss@…'"): flashstock refuses such a URL first, with the password masked."""
    pieces = ["Od/d", "d#pa", "pa?ss", "ss@wo", "wo:rd", "rd%x", "Od@d", "d:5x"]
    which = "redis" if url.startswith("redis") else "database"
    good = {"redis": "redis://127.0.0.1:1/0", "database": f"sqlite:///{tmp_path / 'l.db'}"}
    monkeypatch.setenv("FLASHSTOCK_REDIS_URL", url if which == "redis" else good["redis"])
    monkeypatch.setenv("FLASHSTOCK_DATABASE_URL", url if which == "database" else good["database"])
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("serve started"))
    with pytest.raises(ValueError) as exc:
        if which == "redis":
            create_sync(url, "test")
        else:
            make_engine(url)
    assert "percent-encode" in str(exc.value) and "***" in str(exc.value)
    shown = [str(exc.value)]
    for args in (["reconcile"], ["db", "upgrade"], ["worker"], ["serve"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2, (args, r.output)
        assert "percent-encode" in r.output and "Traceback" not in r.output, r.output
        shown += [r.output, str(r.exception)]
    for text_ in (*shown, caplog.text):
        for piece in pieces:
            assert piece not in text_, (piece, text_)
