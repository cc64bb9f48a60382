"""The test suite's own layout: what `make test` needs to collect every level in one session.

Covers: no two test modules share a basename across tests/unit, tests/integration and
tests/e2e (the levels are plain directories without __init__.py, so pytest imports modules by
basename and refuses the whole session on a clash, which running one level alone never shows).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parents[1]


def test_test_modules_have_unique_basenames():
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert names, "no test modules found"
    assert [name for name, count in names.items() if count > 1] == []
