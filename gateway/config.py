"""Gateway settings: read once from ``GATEWAY_*`` environment variables and validated at start-up.

Every setting has a default except the API keys, which must be configured while
authentication is on (the default): a gateway that silently accepts everyone is a
worse failure than one that refuses to start.

==============================  ==========================================================
GATEWAY_TRITON_URL              Triton's gRPC host:port (127.0.0.1:8001); several servers,
                                balanced per request (round_robin), as a comma-separated
                                list or ``dns:///name:port`` (gateway/triton_target.py)
GATEWAY_DEFAULT_MODEL           model used when a request names none (resnet50)
GATEWAY_MODEL_REPOSITORY        the repository directory, read-only, for labels.txt
                                (model_repository)
GATEWAY_API_KEYS                comma-separated API keys
GATEWAY_API_KEYS_FILE           file with one key a line, ``#`` comments
GATEWAY_AUTH                    on/off (on); off only for local development
GATEWAY_CORS_ORIGINS            comma-separated allowed origins (none)
GATEWAY_MAX_BODY_BYTES          request body and decoded image limit (10 MiB)
GATEWAY_MAX_PIXELS              width x height limit, checked before decoding (40 000 000)
GATEWAY_TRITON_TIMEOUT_S        timeout of every Triton call (10)
GATEWAY_READY_TIMEOUT_S         timeout of the /ready checks (2)
GATEWAY_MODEL_CACHE_TTL_S       how long model facts are cached (30)
GATEWAY_DEFAULT_TOP_K           predictions returned when top_k is absent (5)
GATEWAY_LOG_LEVEL               DEBUG/INFO/WARNING/ERROR/CRITICAL (INFO)
GATEWAY_MAX_INFLIGHT            /analyze requests working at once, per worker (8)
GATEWAY_MAX_QUEUE               /analyze requests waiting for a slot, per worker (16)
GATEWAY_QUEUE_TIMEOUT_S         longest wait for a slot before 503 overloaded (5)
GATEWAY_JPEG_DRAFT              on/off (on): decode large JPEGs at 1/2, 1/4 or 1/8 scale
                                (libjpeg DCT scaling), shorter side kept >= 2x the model's
                                resize size, and resize only the centre crop's region;
                                off = exact torchvision parity
                                (docs/performance.md has the accuracy figures)
GATEWAY_RATE_LIMIT              per-API-key limit such as ``100/minute`` or
                                ``10/second;500/hour``: exact across workers and replicas
                                with GATEWAY_REDIS_URL, else per worker; empty = off (off)
GATEWAY_HISTORY_URL             where answers are stored: ``sqlite:///path`` or
                                ``postgresql+psycopg://user:password@host/db``; empty = off (off)
GATEWAY_HISTORY_SECRET          the key of the HMAC that turns an API key into the stored owner
                                id (at least 16 characters; required with GATEWAY_HISTORY_URL;
                                changing it orphans every stored row)
GATEWAY_HISTORY_SECRET_FILE     a file holding it instead
GATEWAY_HISTORY_RETENTION_DAYS  rows older than this are deleted; 0 = keep them (90)
GATEWAY_HISTORY_TIMEOUT_S       bound of every history connection and statement (2)
GATEWAY_ROLLOUT_DIR             rollout records (docs/rollout.md): new versions are verified
                                before they get traffic, canary/shadow/promote/rollback with
                                ``python -m rollout``; needs Triton in explicit model-control
                                mode; empty = off: Triton's newest version answers (off)
GATEWAY_ROLLOUT_REFRESH_S       how old a worker's copy of a record may be (0.5, at most 2)
GATEWAY_ROLLOUT_CONTROLLER      on/off (on): run the controller loop (one acts per machine)
GATEWAY_MAX_BATCH_IMAGES        images in one /analyze/batch request; 0 = the model's
                                max_batch_size (0)
GATEWAY_MAX_BATCH_BODY_BYTES    body limit of /analyze/batch (32 MiB; each image still
                                within GATEWAY_MAX_BODY_BYTES)
GATEWAY_REDIS_URL               ``redis://[:password@]host:port/db`` (or ``rediss://``,
                                ``unix://``) shared by every worker and replica: exact rate
                                limits and a shared answer cache; empty = off (off)
GATEWAY_REDIS_TIMEOUT_S         bound of every Redis call, connecting included (0.25)
GATEWAY_CACHE                   on/off (on): answer repeated images from a cache
GATEWAY_CACHE_TTL_S             how long a cached answer lives (3600)
GATEWAY_CACHE_MAX_BYTES         the in-process cache's bound, per worker, without Redis (64 MiB)
GATEWAY_CACHE_SCOPE             key/shared (key): cached answers are per API key, or shared
                                between keys (a hit then tells a key that another sent the image)
==============================  ==========================================================

gunicorn's settings (``ServerSettings``, applied by gateway/gunicorn.conf.py):

==============================  ==========================================================
GATEWAY_BIND                    address to listen on (127.0.0.1:8080)
GATEWAY_WORKERS                 worker processes (2)
GATEWAY_THREADS                 gthread threads per worker (GATEWAY_MAX_INFLIGHT +
                                GATEWAY_MAX_QUEUE + 4)
GATEWAY_TIMEOUT_S               worker timeout, whole seconds (60)
GATEWAY_ACCESS_LOG              gunicorn's access log; 0/off/false/no turns it off (on)
GATEWAY_FORWARDED_ALLOW_IPS     proxies trusted for X-Forwarded-* (127.0.0.1)
GATEWAY_TLS_CERT_FILE           PEM certificate (chain): gunicorn serves HTTPS only, and every
                                answer carries HSTS; both or neither (off: TLS ends at a proxy)
GATEWAY_TLS_KEY_FILE            its PEM private key
==============================  ==========================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.ratelimit import RateLimitSyntaxError, parse_rate_limit
from gateway.triton_target import TargetError, parse_target
from model_contract.files import is_valid_model_name

PREFIX = "GATEWAY_"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: Threads per worker beyond the admission gate's working and waiting requests, so that
#: overload is refused at once and /health, /ready, /metrics answer (docs/reliability.md).
SPARE_THREADS = 4


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable and what is expected."""


@dataclass(frozen=True)
class Settings:
    """Validated gateway configuration (see ``from_env`` for the variables)."""

    triton_url: str = "127.0.0.1:8001"
    default_model: str = "resnet50"
    model_repository: Path = Path("model_repository")
    auth_enabled: bool = True
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pixels: int = 40_000_000
    triton_timeout_s: float = 10.0
    ready_timeout_s: float = 2.0
    model_cache_ttl_s: float = 30.0
    default_top_k: int = 5
    log_level: str = "INFO"
    # 2 workers x 8 = 16 = export's max_batch_size: Triton can form full batches
    # (docs/performance.md; ServerSettings.workers is the 2).
    max_inflight: int = 8
    max_queue: int = 16
    queue_timeout_s: float = 5.0
    rate_limit: str = ""  # limits' notation; empty: no rate limit
    jpeg_draft: bool = True
    history_url: str = field(default="", repr=False)  # empty: history off; may hold a password
    history_secret: bytes = field(default=b"", repr=False)
    history_retention_days: int = 90
    history_timeout_s: float = 2.0
    rollout_dir: Path | None = None  # None: rollout off
    rollout_refresh_s: float = 0.5
    rollout_controller: bool = True
    max_batch_images: int = 0  # 0: the model's max_batch_size
    max_batch_body_bytes: int = 32 * 1024 * 1024
    redis_url: str = field(default="", repr=False)  # empty: Redis off; may hold a password
    redis_timeout_s: float = 0.25
    cache_enabled: bool = True
    cache_ttl_s: float = 3600.0
    cache_max_bytes: int = 64 * 1024 * 1024
    cache_shared: bool = False  # GATEWAY_CACHE_SCOPE=shared

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``GATEWAY_*`` variables, raising ConfigError with a clear message."""
        env = _Env(environ)
        auth_enabled = env.boolean("AUTH", True)
        api_keys = _read_api_keys(env)
        if auth_enabled and not api_keys:
            raise ConfigError(
                "authentication is on but no API key is configured: set GATEWAY_API_KEYS "
                "(comma-separated) or GATEWAY_API_KEYS_FILE (one key a line), "
                "or GATEWAY_AUTH=off for local development only"
            )
        default_model = env.text("DEFAULT_MODEL", cls.default_model)
        if not is_valid_model_name(default_model):
            raise ConfigError(f"GATEWAY_DEFAULT_MODEL={default_model!r} is not a valid model name")
        triton_url = env.text("TRITON_URL", cls.triton_url)
        try:
            parse_target(triton_url)
        except TargetError as exc:
            raise ConfigError(f"GATEWAY_TRITON_URL={triton_url!r}: {exc}") from None
        log_level = _read_log_level(env)
        return cls(
            triton_url=triton_url,
            default_model=default_model,
            model_repository=Path(env.text("MODEL_REPOSITORY", str(cls.model_repository))),
            auth_enabled=auth_enabled,
            api_keys=api_keys,
            cors_origins=_read_origins(env),
            max_body_bytes=env.integer("MAX_BODY_BYTES", cls.max_body_bytes, minimum=1024),
            max_pixels=env.integer("MAX_PIXELS", cls.max_pixels, minimum=1),
            triton_timeout_s=env.number("TRITON_TIMEOUT_S", cls.triton_timeout_s, maximum=600),
            ready_timeout_s=env.number("READY_TIMEOUT_S", cls.ready_timeout_s, maximum=60),
            model_cache_ttl_s=env.number("MODEL_CACHE_TTL_S", cls.model_cache_ttl_s, maximum=3600),
            default_top_k=env.integer("DEFAULT_TOP_K", cls.default_top_k, minimum=1, maximum=20),
            log_level=log_level,
            max_inflight=_read_max_inflight(env),
            max_queue=_read_max_queue(env),
            queue_timeout_s=env.number("QUEUE_TIMEOUT_S", cls.queue_timeout_s, maximum=300),
            rate_limit=_read_rate_limit(env),
            jpeg_draft=env.boolean("JPEG_DRAFT", cls.jpeg_draft),
            history_url=_read_history_url(env),
            history_secret=_read_history_secret(env),
            history_retention_days=env.integer(
                "HISTORY_RETENTION_DAYS", cls.history_retention_days, minimum=0, maximum=36500
            ),
            history_timeout_s=env.number("HISTORY_TIMEOUT_S", cls.history_timeout_s, maximum=60),
            rollout_dir=Path(rollout_dir) if (rollout_dir := env.raw("ROLLOUT_DIR")) else None,
            rollout_refresh_s=env.number("ROLLOUT_REFRESH_S", cls.rollout_refresh_s, maximum=2),
            rollout_controller=env.boolean("ROLLOUT_CONTROLLER", cls.rollout_controller),
            max_batch_images=env.integer(
                "MAX_BATCH_IMAGES", cls.max_batch_images, minimum=0, maximum=256
            ),
            max_batch_body_bytes=env.integer(
                "MAX_BATCH_BODY_BYTES", cls.max_batch_body_bytes, minimum=1024
            ),
            redis_url=_read_redis_url(env),
            redis_timeout_s=env.number("REDIS_TIMEOUT_S", cls.redis_timeout_s, maximum=10),
            cache_enabled=env.boolean("CACHE", cls.cache_enabled),
            cache_ttl_s=env.number("CACHE_TTL_S", cls.cache_ttl_s, maximum=30 * 86400),
            cache_max_bytes=env.integer(
                "CACHE_MAX_BYTES", cls.cache_max_bytes, minimum=0, maximum=2**40
            ),
            cache_shared=_read_cache_scope(env),
        )


@dataclass(frozen=True)
class ServerSettings:
    """Validated gunicorn settings (gateway/gunicorn.conf.py); see the module docstring."""

    bind: str = "127.0.0.1:8080"
    # Two workers, one per core of the 2-core reference box (docs/performance.md): the
    # gateway's own work is ~10 ms of CPU per 1080p request (JSON, base64, draft decode,
    # resize), 0.2 of a core at saturation, so more processes add no capacity; two let the
    # parts that hold the GIL (JSON, base64, Flask) run on both cores (Pillow's decode and
    # resize release it). What sets throughput is how many requests reach Triton at once
    # (workers x GATEWAY_MAX_INFLIGHT, the dynamic batch), not the number of workers:
    # 2 x 8 = 16 lets Triton form batches of 8 on average at 16 clients instead of 4,
    # +6.7 % img/s in paired runs.
    workers: int = 2
    # Threads only wait (on the admission gate or on Triton); their count follows the gate's
    # bounds, so more threads would only queue in gunicorn instead of getting a fast 503.
    threads: int = Settings.max_inflight + Settings.max_queue + SPARE_THREADS
    # Above the Triton timeout, so a slow Triton gives a 504 JSON answer, not a killed worker.
    timeout_s: int = 60
    access_log: bool = True
    forwarded_allow_ips: str = "127.0.0.1"
    log_level: str = Settings.log_level
    max_inflight: int = Settings.max_inflight  # the admission gate's bounds, for the
    max_queue: int = Settings.max_queue  # thread sizing (read as Settings reads them)
    tls_cert_file: Path | None = None  # both or neither: gunicorn then serves HTTPS only
    tls_key_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServerSettings:
        """Build gunicorn's settings from ``GATEWAY_*`` variables, raising ConfigError."""
        env = _Env(environ)
        max_inflight = _read_max_inflight(env)
        max_queue = _read_max_queue(env)
        access_log = env.text("ACCESS_LOG", "on").lower() not in _FALSE
        return cls(
            bind=env.text("BIND", cls.bind),
            workers=env.integer("WORKERS", cls.workers, minimum=1),
            threads=env.integer("THREADS", max_inflight + max_queue + SPARE_THREADS, minimum=1),
            timeout_s=env.integer("TIMEOUT_S", cls.timeout_s, minimum=1),
            access_log=access_log,
            # Not stripped, and an empty value is kept: it trusts no proxy at all.
            forwarded_allow_ips=environ.get(
                PREFIX + "FORWARDED_ALLOW_IPS", cls.forwarded_allow_ips
            ),
            log_level=_read_log_level(env),
            max_inflight=max_inflight,
            max_queue=max_queue,
            **_read_tls(env),
        )


def _read_tls(env: _Env) -> dict[str, Path]:
    cert, key = env.raw("TLS_CERT_FILE"), env.raw("TLS_KEY_FILE")
    if not cert and not key:
        return {}
    if not cert or not key:
        missing = "GATEWAY_TLS_KEY_FILE" if cert else "GATEWAY_TLS_CERT_FILE"
        raise ConfigError(
            f"GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE go together: set {missing} too "
            "(or neither, to serve plain HTTP behind a TLS proxy)"
        )
    for name, value in (("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", key)):
        try:
            with open(value, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise ConfigError(
                f"{PREFIX}{name}={value!r} cannot be read ({exc.strerror or exc}): "
                "give a readable PEM file"
            ) from None
    return {"tls_cert_file": Path(cert), "tls_key_file": Path(key)}


class _Env:
    """Typed access to ``GATEWAY_*`` variables with error messages that name the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str) -> str | None:
        value = self._environ.get(PREFIX + name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(f"{PREFIX}{name}={value!r} must be on/off (or true/false, 1/0)")

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{PREFIX}{name}={value!r} must be an integer") from None
        if number < minimum or (maximum is not None and number > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ConfigError(f"{PREFIX}{name}={number} must be at least {minimum}{upper}")
        return number

    def number(self, name: str, default: float, *, maximum: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name}={value!r} must be a number of seconds") from None
        if not 0 < number <= maximum:  # also rejects NaN
            raise ConfigError(f"{PREFIX}{name}={value!r} must be above 0 and at most {maximum}")
        return number


def _read_max_inflight(env: _Env) -> int:
    return env.integer("MAX_INFLIGHT", Settings.max_inflight, minimum=1, maximum=1024)


def _read_max_queue(env: _Env) -> int:
    return env.integer("MAX_QUEUE", Settings.max_queue, minimum=0, maximum=4096)


def _read_log_level(env: _Env) -> str:
    log_level = env.text("LOG_LEVEL", Settings.log_level).upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"GATEWAY_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    return log_level


def _read_api_keys(env: _Env) -> tuple[str, ...]:
    keys = [key.strip() for key in (env.raw("API_KEYS") or "").split(",")]
    path = env.raw("API_KEYS_FILE")
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"GATEWAY_API_KEYS_FILE={path!r} cannot be read: {exc}") from None
        keys.extend(line.strip() for line in lines if not line.lstrip().startswith("#"))
    unique = tuple(dict.fromkeys(key for key in keys if key))
    for key in unique:
        # Keys travel in HTTP headers: anything outside visible ASCII could never match.
        if not all(33 <= ord(char) <= 126 for char in key):
            raise ConfigError(
                "an API key contains whitespace or non-ASCII characters (key not shown)"
            )
    return unique


def _read_rate_limit(env: _Env) -> str:
    text = env.raw("RATE_LIMIT")
    if text is None or text.lower() in _FALSE:
        return ""
    try:
        parse_rate_limit(text)
    except RateLimitSyntaxError:
        raise ConfigError(
            f"GATEWAY_RATE_LIMIT={text!r} must be like 100/minute or 10/second;500/hour "
            "(empty or off: no limit)"
        ) from None
    return text


def _read_origins(env: _Env) -> tuple[str, ...]:
    origins = tuple(
        o.strip().rstrip("/") for o in (env.raw("CORS_ORIGINS") or "").split(",") if o.strip()
    )
    for origin in origins:
        if origin == "*" or not re.fullmatch(r"https?://[A-Za-z0-9.\-]+(:\d{1,5})?", origin):
            raise ConfigError(
                f"GATEWAY_CORS_ORIGINS entry {origin!r} must be an origin like https://app.example.com"
            )
    return origins


def _read_history_url(env: _Env) -> str:
    url = env.raw("HISTORY_URL")
    if url is None:
        return ""
    from gateway.history.store import history_url  # SQLAlchemy only when history is on

    try:
        history_url(url)
    except ValueError as error:
        # The URL may hold a password: name the variable and the problem, not the value.
        raise ConfigError(f"GATEWAY_HISTORY_URL {error} (value not shown)") from None
    return url


def _read_history_secret(env: _Env) -> bytes:
    secret = env.raw("HISTORY_SECRET")
    path = env.raw("HISTORY_SECRET_FILE")
    if secret is None and path is not None:
        try:
            secret = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"GATEWAY_HISTORY_SECRET_FILE={path!r} cannot be read: {exc}"
            ) from None
    if env.raw("HISTORY_URL") is None:
        return b""
    if not secret or len(secret) < 16:
        raise ConfigError(
            "GATEWAY_HISTORY_URL is set, so GATEWAY_HISTORY_SECRET (or "
            "GATEWAY_HISTORY_SECRET_FILE) must hold at least 16 characters: the key of the hash "
            "that stands for API keys in the database (make one with: python -c "
            "'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return secret.encode("utf-8")


def _read_redis_url(env: _Env) -> str:
    url = env.raw("REDIS_URL")
    if url is None:
        return ""
    scheme, _, rest = url.partition("://")
    if scheme not in ("redis", "rediss", "unix") or not rest or any(c.isspace() for c in url):
        # The URL may hold a password: name the variable and the problem, not the value.
        raise ConfigError(
            "GATEWAY_REDIS_URL must be like redis://host:6379/0, rediss://host:6380/0 or "
            "unix:///path/redis.sock (value not shown)"
        )
    return url


def _read_cache_scope(env: _Env) -> bool:
    scope = env.text("CACHE_SCOPE", "key").lower()
    if scope not in ("key", "shared"):
        raise ConfigError(f"GATEWAY_CACHE_SCOPE={scope!r} must be key or shared")
    return scope == "shared"
