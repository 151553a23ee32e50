"""Shared pytest set-up: the fixture plugins that start real components.

- tests/fixtures/models.py: a model repository published by the real `python -m export`;
- tests/fixtures/triton.py: the real Triton server (local_triton) on that repository;
- tests/fixtures/gateway.py: the real gateway under gunicorn, over HTTP.
"""

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.triton",
    "tests.fixtures.gateway",
]
