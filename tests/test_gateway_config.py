"""Settings.from_env: defaults, validation, API keys from env and file; create_app refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import (
    DEFAULT_MAX_BODY_BYTES,
    SPARE_THREADS,
    ConfigError,
    ServerSettings,
    Settings,
)
from tests.fixtures.gateway import MakeApp

KEYS = {"GATEWAY_API_KEYS": "k1"}


def test_defaults_need_only_an_api_key() -> None:
    """With one key configured, every other setting has the documented default."""
    settings = Settings.from_env(KEYS)
    assert settings.triton_url == "127.0.0.1:8001"
    assert settings.default_model == "resnet50"
    assert settings.model_repository == Path("model_repository")
    assert settings.auth_enabled is True
    assert settings.api_keys == ("k1",)
    assert settings.cors_origins == ()
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 10 * 1024 * 1024
    assert settings.max_pixels == 40_000_000
    assert settings.triton_timeout_s == 10.0
    assert settings.log_level == "INFO"
    assert settings.jpeg_draft is True


def test_settings_are_frozen_and_hide_keys_in_repr() -> None:
    """Settings cannot be mutated after start-up, and repr() does not print keys."""
    settings = Settings.from_env({"GATEWAY_API_KEYS": "super-secret"})
    with pytest.raises(AttributeError):
        settings.default_model = "other"  # type: ignore[misc]
    assert "super-secret" not in repr(settings)


def test_auth_on_without_keys_refuses_with_a_clear_message() -> None:
    """Auth is on by default; no key configured is a start-up error that says what to do."""
    with pytest.raises(ConfigError, match="GATEWAY_API_KEYS") as info:
        Settings.from_env({})
    assert "GATEWAY_AUTH=off" in str(info.value)


def test_auth_off_needs_no_keys() -> None:
    """GATEWAY_AUTH=off (local development) starts without keys."""
    assert Settings.from_env({"GATEWAY_AUTH": "off"}).auth_enabled is False


def test_several_keys_from_env_and_file(tmp_path: Path) -> None:
    """Keys come comma-separated from the env and one a line from a file (# comments, blanks)."""
    key_file = tmp_path / "keys"
    key_file.write_text("# production keys\nfile-key-1\n\n   file-key-2  \n# old-key\nk2\n")
    settings = Settings.from_env(
        {"GATEWAY_API_KEYS": " k1, k2 ,,", "GATEWAY_API_KEYS_FILE": str(key_file)}
    )
    assert settings.api_keys == ("k1", "k2", "file-key-1", "file-key-2")


def test_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    """A missing key file names the variable."""
    with pytest.raises(ConfigError, match="GATEWAY_API_KEYS_FILE"):
        Settings.from_env({"GATEWAY_API_KEYS_FILE": str(tmp_path / "missing")})


def test_key_with_whitespace_inside_is_rejected_without_showing_it() -> None:
    """A key that could never arrive in a header is a configuration error; the key is not echoed."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"GATEWAY_API_KEYS": "bad key"})
    assert "bad key" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("GATEWAY_TRITON_URL", "http://triton:8001", "GATEWAY_TRITON_URL"),
        ("GATEWAY_TRITON_URL", "triton", "GATEWAY_TRITON_URL"),
        ("GATEWAY_TRITON_URL", "triton:99999", "GATEWAY_TRITON_URL"),
        ("GATEWAY_DEFAULT_MODEL", "../etc", "GATEWAY_DEFAULT_MODEL"),
        ("GATEWAY_AUTH", "maybe", "GATEWAY_AUTH"),
        ("GATEWAY_MAX_BODY_BYTES", "ten", "GATEWAY_MAX_BODY_BYTES"),
        ("GATEWAY_MAX_BODY_BYTES", "10", "GATEWAY_MAX_BODY_BYTES"),
        ("GATEWAY_MAX_PIXELS", "0", "GATEWAY_MAX_PIXELS"),
        ("GATEWAY_TRITON_TIMEOUT_S", "0", "GATEWAY_TRITON_TIMEOUT_S"),
        ("GATEWAY_TRITON_TIMEOUT_S", "nan", "GATEWAY_TRITON_TIMEOUT_S"),
        ("GATEWAY_TRITON_TIMEOUT_S", "soon", "GATEWAY_TRITON_TIMEOUT_S"),
        ("GATEWAY_LOG_LEVEL", "LOUD", "GATEWAY_LOG_LEVEL"),
        ("GATEWAY_CORS_ORIGINS", "*", "GATEWAY_CORS_ORIGINS"),
        ("GATEWAY_CORS_ORIGINS", "example.com", "GATEWAY_CORS_ORIGINS"),
        ("GATEWAY_DEFAULT_TOP_K", "21", "GATEWAY_DEFAULT_TOP_K"),
        ("GATEWAY_JPEG_DRAFT", "sometimes", "GATEWAY_JPEG_DRAFT"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str, fragment: str) -> None:
    """Every invalid setting fails at start-up with a message naming the variable."""
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env({**KEYS, name: value})


# A valid value of each setting: the variable, its text, the Settings field, the parsed value.
OVERRIDES: list[tuple[str, str, str, object]] = [
    ("GATEWAY_TRITON_URL", "triton:8001", "triton_url", "triton:8001"),
    ("GATEWAY_DEFAULT_MODEL", "efficientnet_lite0", "default_model", "efficientnet_lite0"),
    ("GATEWAY_AUTH", "ON", "auth_enabled", True),
    (
        "GATEWAY_CORS_ORIGINS",
        "https://app.example.com, http://localhost:3000/",
        "cors_origins",
        ("https://app.example.com", "http://localhost:3000"),
    ),
    ("GATEWAY_MAX_BODY_BYTES", "2_000_000", "max_body_bytes", 2_000_000),
    ("GATEWAY_MAX_PIXELS", "1000", "max_pixels", 1000),
    ("GATEWAY_TRITON_TIMEOUT_S", "2.5", "triton_timeout_s", 2.5),
    ("GATEWAY_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("GATEWAY_JPEG_DRAFT", "off", "jpeg_draft", False),
]


def test_valid_overrides_are_parsed() -> None:
    """Typed values, origins and case-insensitive booleans are read, all set at once."""
    settings = Settings.from_env({**KEYS, **{name: text for name, text, _, _ in OVERRIDES}})
    for _, _, field, expected in OVERRIDES:
        value = getattr(settings, field)
        assert (type(value), value) == (type(expected), expected), field


def test_server_settings_share_the_admission_defaults() -> None:
    """gunicorn's defaults: 2 workers, threads = the gate's in flight + queue + spare threads."""
    server = ServerSettings.from_env({})
    settings = Settings.from_env({"GATEWAY_AUTH": "off"})
    assert (server.bind, server.workers, server.timeout_s) == ("127.0.0.1:8080", 2, 60)
    assert (server.max_inflight, server.max_queue) == (settings.max_inflight, settings.max_queue)
    assert server.threads == settings.max_inflight + settings.max_queue + SPARE_THREADS
    assert server.access_log is True and server.log_level == settings.log_level


def test_server_settings_from_the_environment() -> None:
    """Explicit values win; threads follow the gate's bounds when not given; access log off."""
    server = ServerSettings.from_env(
        {
            "GATEWAY_BIND": " 0.0.0.0:9000 ",
            "GATEWAY_WORKERS": "3",
            "GATEWAY_MAX_INFLIGHT": "3",
            "GATEWAY_MAX_QUEUE": "5",
            "GATEWAY_ACCESS_LOG": "Off",
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_FORWARDED_ALLOW_IPS": "",
        }
    )
    assert (server.bind, server.workers, server.threads) == ("0.0.0.0:9000", 3, 12)
    assert server.access_log is False and server.log_level == "WARNING"
    assert server.forwarded_allow_ips == ""  # set but empty: no proxy is trusted
    assert ServerSettings.from_env({"GATEWAY_THREADS": "6"}).threads == 6


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_WORKERS", "many"),
        ("GATEWAY_WORKERS", "0"),
        ("GATEWAY_THREADS", "0"),
        ("GATEWAY_TIMEOUT_S", "1.5"),
        ("GATEWAY_MAX_INFLIGHT", "0"),
        ("GATEWAY_MAX_QUEUE", "-1"),
        ("GATEWAY_LOG_LEVEL", "LOUD"),
    ],
)
def test_invalid_server_values_name_the_variable(name: str, value: str) -> None:
    """A bad gunicorn setting fails with the variable's name, with or without API keys."""
    with pytest.raises(ConfigError, match=name):
        ServerSettings.from_env({name: value})


def test_create_app_refuses_to_start_with_auth_and_no_key(make_gateway_app: MakeApp) -> None:
    """The app factory applies the same validation (no silently open gateway)."""
    with pytest.raises(ConfigError, match="no API key"):
        make_gateway_app(GATEWAY_API_KEYS="")
