"""Every setting of batchops in one place.

Variables are read from the environment with the ``BATCHOPS_`` prefix. The few
names that come from the seed documents (``BILLING_ALLOW_ON_ERROR``,
``HTTP_TIMEOUT`` …) are accepted under those names too, so an operator can copy
them from the original system's ``.env``.
"""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from platformdirs import user_data_dir
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Printed in the source, so anyone can sign tokens with them: loopback only (see serving_problem).
DEFAULT_JWT_SECRET = "dev-insecure-jwt-secret-change-me"
DEFAULT_SERVICE_TOKEN = "dev-service-token"
# Settings whose published default lets anyone sign tokens or session cookies.
SECRETS = ("jwt_secret", "service_token", "console_secret")


def default_database_url() -> str:
    """One SQLite file in the user's data directory, whatever the current directory:
    ``~/.local/share/batchops`` on Linux (``$XDG_DATA_HOME/batchops``),
    ``~/Library/Application Support/batchops`` on macOS, ``%LOCALAPPDATA%\\batchops`` on Windows."""
    return f"sqlite:///{Path(user_data_dir('batchops', appauthor=False)) / 'batchops.db'}"


@lru_cache(maxsize=8)
def ip_networks(allowed: str) -> tuple[IpNetwork, ...]:
    """``"10.0.0.0/8, 192.168.1.5"`` as networks (a bare address is a network of one);
    a malformed entry raises ValueError."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in allowed.split(",") if part.strip())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCHOPS_", extra="ignore", populate_by_name=True)

    # --- storage -----------------------------------------------------------------
    database_url: str = Field(
        default_factory=default_database_url,
        description="sqlite:///path.db (default: batchops.db in the user's data directory) or postgresql://user@host:port/db",
    )
    # Connection budget (README "Scale-out"): each process opens at most
    # db_pool_size + db_max_overflow PostgreSQL connections.
    db_pool_size: int = Field(10, ge=1, description="connections kept per process (PostgreSQL)")
    db_max_overflow: int = Field(
        0, ge=0, description="connections a process may open beyond db_pool_size under load (PostgreSQL)"
    )
    db_pool_timeout_seconds: float = Field(
        10.0, gt=0, description="wait for a free connection before answering 503 with Retry-After"
    )

    # --- auth ----------------------------------------------------------------------
    jwt_secret: str = Field(DEFAULT_JWT_SECRET, description="HS256 key for bearer tokens")
    jwt_ttl_hours: int = Field(24, ge=1, description="lifetime of tokens printed by `batchops token`")
    service_token: str = Field(DEFAULT_SERVICE_TOKEN, description="X-Service-Token for /api/internal/*")
    bootstrap_admin: str | None = Field(None, description="user id made an active admin at start-up")
    batch_allowed_ips: str | None = Field(
        None,
        description="IPs and CIDR networks, comma-separated, that may call the admin batch endpoints (unset = any)",
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="largest request body; a larger one is refused with 413 as it streams"
    )

    # --- console (web) ----------------------------------------------------------------
    console_secret: str = Field(
        "dev-insecure-console-secret-change-me", description="key that signs the console's session cookie"
    )
    console_session_hours: int = Field(12, ge=1, le=24 * 30, description="a console sign-in lasts this long")
    console_secure_cookie: bool = Field(False, description="send the session cookie over HTTPS only (behind TLS)")
    console_signin_limit: str = Field(
        "5/minute", description="failed console sign-ins allowed per account and per address (limits' notation)"
    )

    # --- optional infrastructure -----------------------------------------------------
    amqp_url: str | None = Field(None, description="RabbitMQ URL; events also go to exchange batchops.events")
    amqp_exchange: str = Field("batchops.events", description="topic exchange for events")
    redis_url: str | None = Field(None, description="Redis URL for shared rate limits and WebSocket fan-out")

    # --- worker ----------------------------------------------------------------------
    embedded_worker: bool = Field(True, description="run the worker loop inside `batchops serve`")
    sweep_interval_seconds: float = Field(60.0, gt=0, description="expiry sweep period")
    outbox_poll_seconds: float = Field(0.5, gt=0, description="idle wait between outbox polls")
    outbox_batch_size: int = Field(200, ge=1, description="outbox rows claimed at once")
    outbox_lease_seconds: float = Field(60.0, gt=0, description="a claimed row is re-offered after this")
    outbox_max_attempts: int = Field(5, ge=1, description="deliveries before a row is dead-lettered")
    dead_letter_retry_seconds: float = Field(900.0, gt=0, description="dead letters are retried this often")

    # --- behaviour -------------------------------------------------------------------
    timezone: str = Field("Asia/Shanghai", description="zone in which dates and daily jobs are judged")
    batch_rate_limit_per_minute: int = Field(
        10, ge=0, description="batch calls per user and endpoint per minute (0 = unlimited)"
    )
    batch_progress_interval_seconds: float = Field(
        1.0,
        ge=0,
        description="a batch still deciding its items after this long pushes its progress (and again each interval)",
    )
    scheduler_tick_seconds: float = Field(
        5.0, gt=0, description="how often reservations start, the wait queue is served and reminders go out"
    )
    daily_release_time: str | None = Field(
        None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM: release every allocation daily (seed: 18:00)"
    )
    expiry_reminder_minutes: int = Field(10, ge=0, description="remind users this long before expiresAt (0 = off)")
    reservation_max_days_ahead: int = Field(30, ge=1, description="how far ahead a reservation may start")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_json: bool = Field(False, description="JSON log lines instead of console lines")

    # --- billing (seed 001 names accepted) ----------------------------------------------
    billing_url: str | None = Field(
        None,
        validation_alias=_alias("BATCHOPS_BILLING_URL", "BILLING_SERVICE_URL"),
        description="remote billing service; unset = billing in-process",
    )
    billing_allow_on_error: bool = Field(
        False,
        validation_alias=_alias("BATCHOPS_BILLING_ALLOW_ON_ERROR", "BILLING_ALLOW_ON_ERROR"),
        description="allow allocation when a remote billing service cannot answer",
    )
    http_timeout_ms: int = Field(
        8000, ge=1, validation_alias=_alias("BATCHOPS_HTTP_TIMEOUT", "HTTP_TIMEOUT"), description="ms"
    )
    http_retries: int = Field(3, ge=0, validation_alias=_alias("BATCHOPS_HTTP_RETRIES", "HTTP_RETRIES"))
    circuit_breaker_threshold: int = Field(
        5, ge=1, validation_alias=_alias("BATCHOPS_CIRCUIT_BREAKER_THRESHOLD", "CIRCUIT_BREAKER_THRESHOLD")
    )
    http_retry_base_seconds: float = Field(1.0, ge=0, description="first retry delay; doubles per retry")
    circuit_breaker_reset_seconds: float = Field(30.0, gt=0, description="an open circuit half-opens after this")
    billing_enforce_balance: bool = Field(
        True, description="allocate holds the estimated cost and fails without enough balance (seed P1/P2)"
    )
    billing_reconcile_interval_seconds: float = Field(
        3600.0, gt=0, description="how often the worker looks for released allocations never charged (seed P1 #6)"
    )
    billing_role: str = Field(
        "all", pattern="^(all|billing)$", description="`billing`: this process serves only the billing API"
    )
    # Pricing (CNY per hour, exact decimals): cost = (cores*cpu + memGB*mem + storageGB*storage) * hours,
    # rounded up to the fen.
    price_cpu_core_hour: Decimal = Field(Decimal("0.10"), ge=0, description="CNY per CPU core-hour")
    price_memory_gb_hour: Decimal = Field(Decimal("0.05"), ge=0, description="CNY per GB-memory-hour")
    price_storage_gb_hour: Decimal = Field(Decimal("0.002"), ge=0, description="CNY per GB-storage-hour")

    # --- studio (seed 003) ------------------------------------------------------------------
    video_provider: str = Field("simulated", pattern="^(simulated|kie)$", description="simulated (offline) or kie")
    sim_time_scale: float = Field(
        1.0, gt=0, description="simulated provider: render times (and the engine's clock) scaled by this"
    )
    sim_failure_rate: float = Field(0.0, ge=0, le=1, description="simulated provider: share of renders that fail")
    kie_api_key: str | None = Field(None, validation_alias=_alias("BATCHOPS_KIE_API_KEY", "KIE_API_KEY"))
    kie_base_url: str = Field("https://api.kie.ai", validation_alias=_alias("BATCHOPS_KIE_BASE_URL", "KIE_BASE_URL"))
    kie_callback_url: str | None = Field(
        None, description="public URL of POST /api/v1/workflow/providers/kie/callback (KIE's callBackUrl)"
    )
    kie_callback_secret: str | None = Field(
        None, min_length=16, description="key of the signature in the KIE callback URL (required with the URL)"
    )
    studio_plans_file: str | None = Field(
        None, description="JSON overrides of the studio plans, re-read when it changes (seed 003: 配置热更新)"
    )
    studio_tick_seconds: float = Field(0.5, gt=0, description="how often a worker claims due studio tasks")
    studio_lease_seconds: float = Field(60.0, gt=0, description="a claimed studio task is re-offered after this")

    @field_validator("batch_allowed_ips")
    @classmethod
    def _networks(cls, value: str | None) -> str | None:
        if value:
            ip_networks(value)  # fails the start-up on a malformed entry
        return value

    @field_validator("console_signin_limit")
    @classmethod
    def _signin_limit(cls, value: str) -> str:
        from limits import parse

        parse(value)  # fails the start-up on a malformed limit
        return value

    @model_validator(mode="after")
    def _callback_is_signed(self) -> Settings:
        if self.kie_callback_url and not self.kie_callback_secret:
            raise ValueError("BATCHOPS_KIE_CALLBACK_URL needs BATCHOPS_KIE_CALLBACK_SECRET (16+ random characters)")
        return self

    def serving_problem(self, host: str) -> str | None:
        """Why serving on ``host`` would be unsafe (a default secret reachable from the
        network), or None. Loopback with the defaults is the demo (``make run``)."""
        if _is_loopback(host):
            return None
        fields = type(self).model_fields
        defaults = [f"BATCHOPS_{name.upper()}" for name in SECRETS if getattr(self, name) == fields[name].default]
        if not defaults:
            return None
        return (
            f"Refusing to serve on {host} with the default {' and '.join(defaults)}: anyone could sign "
            f"tokens with a value printed in the source. Set {', '.join(defaults)} to long random values "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or serve on 127.0.0.1."
        )

    @property
    def batch_allowed_networks(self) -> tuple[IpNetwork, ...] | None:
        """``batch_allowed_ips`` parsed (None: any address may call)."""
        return ip_networks(self.batch_allowed_ips) if self.batch_allowed_ips else None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name resolves to whatever DNS says: not provably loopback


@lru_cache
def get_settings() -> Settings:
    return Settings()
