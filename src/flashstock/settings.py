"""Configuration: one pydantic-settings class, read from ``FLASHSTOCK_*`` variables."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The largest values the limit settings may take: what the request models admit, so that
# raising a limit needs no code change; each request is then held to the setting in force.
MAX_LINES_CEILING = 1_000
MAX_QUANTITY_CEILING = 2**31 - 1
MAX_TTL_CEILING = 10 * 365 * 86_400


class Settings(BaseSettings):
    """Everything flashstock reads from the environment (prefix ``FLASHSTOCK_``).

    With neither ``redis_url`` nor ``database_url`` set, flashstock runs on the
    embedded default: a private Redis it starts itself and a SQLite ledger.
    """

    model_config = SettingsConfigDict(env_prefix="FLASHSTOCK_", extra="ignore")

    # Not in repr: they may hold passwords (see redis_client.redact for logs).
    redis_url: str | None = Field(default=None, repr=False)
    database_url: str | None = Field(default=None, repr=False)
    # Where the embedded default keeps its Redis socket and SQLite ledger.
    data_dir: str = ".flashstock"

    key_prefix: str = Field(default="fs", min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")
    # Every key of one atomic operation shares one hash tag {pN}; see README "Keys".
    partitions: int = Field(default=1, ge=1, le=1024)

    default_ttl_seconds: int = Field(default=900, ge=1, le=MAX_TTL_CEILING)
    max_ttl_seconds: int = Field(default=604_800, ge=1, le=MAX_TTL_CEILING)
    # Terminal reservations and orders' idempotency records are kept this long.
    retention_seconds: int = Field(default=7 * 86_400, ge=60)

    max_lines: int = Field(default=100, ge=1, le=MAX_LINES_CEILING)
    max_quantity: int = Field(default=1_000_000, ge=1, le=MAX_QUANTITY_CEILING)

    # Abuse limits for drops (0: off); an item's own policy fields override them. See docs/security.md.
    rate_limit_customer: int = Field(default=0, ge=0, le=1_000_000)  # reserve attempts per window
    rate_limit_key: int = Field(default=0, ge=0, le=100_000_000)  # per API key
    rate_limit_window_seconds: int = Field(default=60, ge=1, le=86_400)
    max_holds_per_customer: int = Field(default=0, ge=0, le=10_000)  # active reservations
    max_hold_seconds: int = Field(default=0, ge=0, le=31_536_000)  # total, across extensions
    max_cart_share: int = Field(default=0, ge=0, le=100)  # percent of on_hand held in carts

    # Access: API keys "id:scope[+scope]:sha256" (see flashstock/auth.py), body size caps.
    api_keys: str | None = Field(default=None, repr=False)
    api_keys_file: str | None = None
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_import_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    max_import_rows: int = Field(default=200_000, ge=1)  # per POST /v1/stock/import

    # How long a process may answer "sold out" from memory after Redis said so (soldout.py); 0: never.
    soldout_cache_ms: int = Field(default=50, ge=0, le=1_000)

    # Write-behind worker.
    # Up to this many events per read and insert. Larger batches drain faster (per batch: one
    # read, one transaction, one XACK); docs/benchmarks.md has the measured rates.
    worker_batch: int = Field(default=5_000, ge=1, le=10_000)
    worker_block_ms: int = Field(default=200, ge=1)
    worker_claim_idle_ms: int = Field(default=30_000, ge=100)
    sweep_interval_ms: int = Field(default=1_000, ge=10)
    sweep_batch: int = Field(default=500, ge=1)
    # The worker compares Redis with the ledger this often (0: never); drift is logged and
    # exported as flashstock_reconcile_differences. Its metrics are served on this port.
    reconcile_interval_seconds: int = Field(default=60, ge=0)
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65_535)

    # Durability (docs/durability.md): "fast" acknowledges a change once Redis has applied it
    # (AOF everysec: a Redis crash may lose about the last second); "strict" only once Redis
    # has it on disk (appendfsync always, or WAITAOF on Redis >= 7.2, up to this timeout).
    durability: Literal["fast", "strict"] = "fast"
    durability_timeout_ms: int = Field(default=1_000, ge=1, le=60_000)
    # Longest wait for one Redis reply in the API before it answers 503 (Redis hung, not down).
    redis_timeout_seconds: float = Field(default=2.0, gt=0, le=60)

    # HTTP server.
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _default_ttl_within_max(self) -> Self:
        if self.default_ttl_seconds > self.max_ttl_seconds:
            raise ValueError(
                f"FLASHSTOCK_DEFAULT_TTL_SECONDS ({self.default_ttl_seconds}) is above "
                f"FLASHSTOCK_MAX_TTL_SECONDS ({self.max_ttl_seconds}): every reservation "
                "naming no ttl_seconds would be refused"
            )
        return self

    @property
    def embedded(self) -> bool:
        return self.redis_url is None and self.database_url is None
