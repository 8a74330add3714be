import os
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Tool caches go into the test environment, not the user's home (set before test modules import matplotlib):
# matplotlib's font cache, and DeepSpeed's compiled C++ op (compiling takes a minute; `make clean` removes it).
os.environ.setdefault("MPLCONFIGDIR", str(Path(sys.prefix) / "mplconfig"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(
            f"Fixture folder {FIXTURES} is missing: the recorded reference outputs belong in tests/fixtures "
            "(see its README)."
        )
    return FIXTURES
