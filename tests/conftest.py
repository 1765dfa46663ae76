"""Which tests need the repository's Flower app (``clients/``, ``server_app/``,
``benchmarks/``, ``scripts/``: the ``app`` extra) and which test the library alone.

``pytest --library-only`` runs the library's tests: it skips the app's modules at
collection (their imports need the app's extras) and deselects tests marked ``app``.
``make test-min`` runs it against the lowest declared versions of flwr and numpy.
"""

from __future__ import annotations

import pytest

APP_MODULES = {
    "test_app_config.py",
    "test_client_app.py",
    "test_client_startup.py",
    "test_clients.py",
    "test_detox.py",
    "test_flower_runtime.py",
    "test_packaging.py",
    "test_papers.py",
    "test_plug_in.py",
    "test_robustness.py",
    "test_server_app.py",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--library-only",
        action="store_true",
        help="run only the library's tests (no app extras needed)",
    )


def pytest_ignore_collect(collection_path, config: pytest.Config) -> bool | None:
    if config.getoption("--library-only") and collection_path.name in APP_MODULES:
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--library-only"):
        return
    kept = [item for item in items if item.get_closest_marker("app") is None]
    config.hook.pytest_deselected(items=[i for i in items if i not in kept])
    items[:] = kept
