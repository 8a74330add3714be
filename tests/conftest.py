import os
import sys
import types
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


@pytest.fixture
def original_resnext_module(monkeypatch):
    """The original classes importable as models.resnext while a file is pickled."""
    from helpers import CifarResNeXt, ResNeXtBottleneck  # after the environment above is set

    pkg, mod = types.ModuleType("models"), types.ModuleType("models.resnext")
    for cls in (CifarResNeXt, ResNeXtBottleneck):
        monkeypatch.setattr(cls, "__module__", "models.resnext")
        setattr(mod, cls.__name__, cls)
    pkg.resnext = mod
    monkeypatch.setitem(sys.modules, "models", pkg)
    monkeypatch.setitem(sys.modules, "models.resnext", mod)
    return mod
