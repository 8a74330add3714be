from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'fixtures'


@pytest.fixture(scope='session')
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f'Fixture folder {FIXTURES} is missing: parity tests need ../shared/fixtures next to the repo.')
    return FIXTURES
