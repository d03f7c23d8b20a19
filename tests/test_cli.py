"""The command line as a user runs it: demo, warm (with --dry-run), reconcile, db upgrade."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import REDIS_URL, need_redis, unique_prefix
from typer.testing import CliRunner

from flashstock.cli import app
from flashstock.demo import run_demo

FIXTURES = Path(__file__).parent / "fixtures" / "stockfiles"


@pytest.mark.slow
def test_demo_reports_no_oversell_and_a_complete_ledger() -> None:
    lines: list[str] = []
    assert run_demo(hot_skus=2, stock=10, buyers=60, echo=lines.append) is True
    report = "\n".join(lines)
    assert "units oversold   0" in report
    assert "reconcile        clean" in report
    rows, events = report.split("ledger rows")[1].split("\n")[0].split("/  events")
    assert int(rows) == int(events) > 0


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    need_redis()
    values = {
        "FLASHSTOCK_REDIS_URL": REDIS_URL,
        "FLASHSTOCK_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "FLASHSTOCK_KEY_PREFIX": unique_prefix(),
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.mark.redis
def test_warm_dry_run_changes_nothing_then_warm_then_reconcile(env: dict[str, str]) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    csv = FIXTURES / "generic.csv"
    dry = runner.invoke(app, ["warm", str(csv), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would change" in dry.output
    real = runner.invoke(app, ["warm", str(csv)])
    assert real.exit_code == 0, real.output
    again = runner.invoke(app, ["warm", str(csv)])
    assert "levels changed: 0" in again.output
    # Nothing drained yet: reconcile counts events still in the stream, so it agrees.
    rec = runner.invoke(app, ["reconcile"])
    assert rec.exit_code == 0, rec.output
    # ... and says so, since a stopped worker would leave the ledger behind for good.
    waiting = re.search(r"(\d+) event\(s\) not yet in the ledger", rec.output)
    assert waiting is not None and int(waiting[1]) > 0, rec.output


@pytest.mark.redis
def test_warm_bad_file_exits_2_with_line_numbers(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("sku,location,on_hand\nA,default,3\nB,default,-1\nC,default,1.5\n")
    result = CliRunner().invoke(app, ["warm", str(bad)])
    assert result.exit_code == 2
    assert "line 3" in result.output and "line 4" in result.output


@pytest.mark.redis
def test_warm_shows_new_levels_and_all_notes_when_asked(
    env: dict[str, str], tmp_path: Path
) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["db", "upgrade"])
    assert "migrated from empty to revision" in first.output
    assert "is up to date (revision" in runner.invoke(app, ["db", "upgrade"]).output
    # A platform export with 25 negative counts: 25 notes, more than the 20 printed.
    rows = "".join(f"s-{i},S-{i},Shop,-1,0,0,-1\n" for i in range(25))
    shop = tmp_path / "inventory_export.csv"
    shop.write_text("Handle,SKU,Location,On hand,Committed,Unavailable,Available\n" + rows)
    dry = runner.invoke(app, ["warm", str(shop), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "S-0 @ Shop: on_hand new -> 0" in dry.output and "None" not in dry.output
    assert "… and 5 more notes (--all prints them)" in dry.output
    every = runner.invoke(app, ["warm", str(shop), "--dry-run", "--all"])
    assert every.output.count("note: ") == 25 and "more notes" not in every.output


@pytest.mark.redis
@pytest.mark.postgres
def test_reconcile_on_a_database_never_migrated_says_so_and_exits_2(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uuid

    import psycopg
    from conftest_ledger import PG_ADMIN_URL, pg_url_for

    name = f"flashstock_test_{uuid.uuid4().hex[:12]}_empty"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        monkeypatch.setenv("FLASHSTOCK_DATABASE_URL", pg_url_for(name))
        r = CliRunner().invoke(app, ["reconcile"])
        assert r.exit_code == 2, r.output
        assert "run `flashstock db upgrade`" in r.output and "Traceback" not in r.output
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    r = CliRunner().invoke(app, ["warm", str(tmp_path)])
    assert r.exit_code == 2 and "directory" in r.output and "Traceback" not in r.output


def test_serve_help_names_each_default_and_the_variable_that_sets_it() -> None:
    out = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    text = " ".join(out.replace("│", " ").split())
    for option, value in (("host", "127.0.0.1"), ("port", 8000), ("workers", 2)):
        assert f"(default: FLASHSTOCK_{option.upper()}, else {value})" in text, text
