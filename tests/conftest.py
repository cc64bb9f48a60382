"""Session fixtures shared by every test level.

`package_index`: webxample 1.0.0/2.0.0/3.0.0 (built here) and gunicorn's wheels served as a
PEP 503 index on loopback, so every venv build in the tests is a real HTTP install.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.pypi import WebxampleIndex, start_webxample_index


@pytest.fixture(scope="session")
def package_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebxampleIndex]:
    served = start_webxample_index(tmp_path_factory.mktemp("pypi"))
    yield served
    served.stop()
