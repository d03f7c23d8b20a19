"""What the command line says when it cannot run: one line naming the cause, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest_ledger import _admin, pg_url_for, require_postgres
from redis_server import RedisServer
from support import REDIS_URL, need_redis, unique_prefix


def flashstock(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSTOCK_")}
    return subprocess.run(
        [sys.executable, "-m", "flashstock.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("FLASHSTOCK_DEFAULT_TTL_SECONDS", "abc", "valid integer"),
        ("FLASHSTOCK_DURABILITY", "foo", "'fast' or 'strict'"),
        ("FLASHSTOCK_PARTITIONS", "0", "greater than or equal to 1"),
    ],
)
def test_a_bad_setting_is_named_by_its_variable(variable: str, value: str, says: str) -> None:
    result = flashstock("reconcile", **{variable: value})
    assert result.returncode == 2
    line = one_error(result)
    assert variable in line and says in line and repr(value) in line


@pytest.mark.parametrize(
    "url",
    ["mysql://root@127.0.0.1/shop", "notaurl", "postgresql+psycopg2://postgres@127.0.0.1/x"],
)
def test_a_database_url_of_another_kind_is_refused_by_name(url: str, tmp_path: Path) -> None:
    result = flashstock(
        "db", "upgrade", FLASHSTOCK_REDIS_URL=REDIS_URL, FLASHSTOCK_DATABASE_URL=url
    )
    assert result.returncode == 2
    assert "postgresql://USER@HOST/DB or sqlite:///PATH" in one_error(result)


@pytest.mark.redis
def test_serve_on_a_port_in_use_says_so_before_announcing_itself(tmp_path: Path) -> None:
    need_redis()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = flashstock(
            "serve", "--port", str(port), "--workers", "1",
            FLASHSTOCK_REDIS_URL=REDIS_URL, FLASHSTOCK_KEY_PREFIX=unique_prefix(),
            FLASHSTOCK_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
        )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in one_error(result)
    assert "API on" not in result.stderr


def test_strict_serve_on_a_redis_without_aof_exits_3_in_one_line(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendfsync=None)  # no AOF, as a cache runs
    server.start()
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        result = flashstock(
            "serve", "--port", str(port), "--workers", "1",
            FLASHSTOCK_REDIS_URL=server.url, FLASHSTOCK_DURABILITY="strict",
            FLASHSTOCK_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
        )  # fmt: skip
    finally:
        server.stop()
    assert result.returncode == 3
    assert "strict durability needs the AOF" in one_error(result)
    assert "API on" not in result.stderr


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgres://u@h/db", "psycopg"),
        ("postgresql://u@h/db", "psycopg"),
        ("postgresql+psycopg://u@h/db", "psycopg"),
        ("sqlite:///{tmp}/x.db", "pysqlite"),
    ],
)
def test_the_spellings_of_a_ledger_url_users_are_handed_are_taken(
    url: str, driver: str, tmp_path: Path
) -> None:
    from flashstock.db import make_engine

    engine = make_engine(url.format(tmp=tmp_path))  # checks the URL; connects to nothing
    assert engine.dialect.driver == driver
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("database", "says"),
    [
        ("missing", "the database does not exist (createdb, then flashstock db upgrade)"),
        ("empty", "no flashstock tables yet: run `flashstock db upgrade`"),
    ],
)
def test_a_worker_whose_ledger_cannot_work_says_why_and_exits_2(database: str, says: str) -> None:
    """A setup mistake is not an outage: the worker stops at once instead of retrying forever."""
    need_redis()
    require_postgres()
    name = f"flashstock_test_{uuid.uuid4().hex[:12]}_{database}"
    if database == "empty":
        _admin(f'CREATE DATABASE "{name}"')
    try:
        result = flashstock(
            "worker", timeout=20, FLASHSTOCK_REDIS_URL=REDIS_URL,
            FLASHSTOCK_KEY_PREFIX=unique_prefix(), FLASHSTOCK_DATABASE_URL=pg_url_for(name),
        )  # fmt: skip
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert result.returncode == 2, result.stderr
    line = one_error(result)
    assert says in line and name not in line


def test_a_worker_whose_ledger_server_is_down_waits_for_it() -> None:
    """Unreachable is an outage (the server may be starting): the worker keeps retrying."""
    need_redis()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    proc = subprocess.Popen(
        [sys.executable, "-m", "flashstock.cli", "worker"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("FLASHSTOCK_")},
            "FLASHSTOCK_REDIS_URL": REDIS_URL,
            "FLASHSTOCK_KEY_PREFIX": unique_prefix(),
            "FLASHSTOCK_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/ledger",
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=8)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
