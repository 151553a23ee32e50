"""Shared pytest set-up: the fixture plugins that start real components.

- tests/fixtures/models.py: a model repository published by the real `python -m export`;
- tests/fixtures/triton.py: the real Triton server (local_triton) on that repository;
- tests/fixtures/gateway.py: the real gateway under gunicorn, over HTTP;
- tests/fixtures/postgres.py: a real, throwaway PostgreSQL cluster and fresh databases on it;
- tests/fixtures/redis.py: a real, throwaway Redis (crash and restart it; or one of a test's own);
- tests/fixtures/browser.py: Debian's headless Chromium under Selenium (offline), screenshots;
- tests/reliability_support.py: the Python-backend models and their session Triton.
"""

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.triton",
    "tests.fixtures.gateway",
    "tests.fixtures.postgres",
    "tests.fixtures.redis",
    "tests.fixtures.browser",
    "tests.reliability_support",
]


def pytest_report_header() -> str:
    """Name the CPU and its int8 flags: int8 results depend on them (VNNI or AVX2 only)."""
    from export.cpu_features import read_cpu_features

    return f"cpu: {read_cpu_features().describe()}"
