"""The embedded default starts only when neither URL is set; one URL alone is a mistake, said so."""

from __future__ import annotations

from pathlib import Path

import pytest

from flashstock import embedded
from flashstock.settings import Settings


@pytest.mark.parametrize(
    ("redis_url", "database_url", "missing"),
    [
        ("redis://127.0.0.1:6379/0", None, "FLASHSTOCK_DATABASE_URL"),
        (None, "postgresql://postgres@127.0.0.1/flashstock", "FLASHSTOCK_REDIS_URL"),
    ],
)
def test_one_url_alone_is_refused(
    tmp_path: Path, redis_url: str | None, database_url: str | None, missing: str
) -> None:
    s = Settings(redis_url=redis_url, database_url=database_url, data_dir=str(tmp_path))
    with pytest.raises(embedded.ConfigurationError, match=missing):
        embedded.start(s)
    assert not any(tmp_path.iterdir())  # nothing was started or created


def test_neither_url_starts_a_private_store(tmp_path: Path) -> None:
    emb = embedded.start(Settings(redis_url=None, database_url=None, data_dir=str(tmp_path)))
    try:
        assert emb.settings.redis_url and emb.settings.database_url
        assert emb.settings.database_url.startswith("sqlite:///")
    finally:
        emb.stop()


def test_cli_says_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flashstock.cli import app

    monkeypatch.setenv("FLASHSTOCK_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.delenv("FLASHSTOCK_DATABASE_URL", raising=False)
    monkeypatch.setenv("FLASHSTOCK_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["reconcile"])
    assert result.exit_code == 2
    assert "FLASHSTOCK_DATABASE_URL" in result.output


def test_reconcile_exits_2_when_redis_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from flashstock.cli import app

    monkeypatch.setenv("FLASHSTOCK_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    monkeypatch.setenv("FLASHSTOCK_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    assert CliRunner().invoke(app, ["db", "upgrade"]).exit_code == 0
    result = CliRunner().invoke(app, ["reconcile"])
    assert result.exit_code == 2, result.output
    assert "cannot reach Redis" in result.output and "Traceback" not in result.output
