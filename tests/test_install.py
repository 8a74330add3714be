"""pyproject.toml: `pip install -e .` makes `density` importable from anywhere and installs the asgan-* commands.

Offline: the fresh venv sees this venv's packages through a .pth file (setuptools included), and pip installs with
--no-index --no-deps --no-build-isolation. The repository is copied first, so the build writes nothing into it.
"""
import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pip_install_editable_makes_density_and_the_commands_available(tmp_path):
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())
    repo = tmp_path / 'repo'
    shutil.copytree(ROOT / 'density', repo / 'density', ignore=shutil.ignore_patterns('__pycache__'))
    for name in ['pyproject.toml', 'README.md'] + [f'{m}.py' for m in project['tool']['setuptools']['py-modules']]:
        shutil.copy(ROOT / name, repo / name)
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    python = venv / 'bin' / 'python'
    own = subprocess.run([str(python), '-c', 'import site; print(site.getsitepackages()[0])'], check=True,
                         capture_output=True, text=True).stdout.strip()
    (Path(own) / 'parent.pth').write_text('\n'.join(site.getsitepackages()) + '\n')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'} | {'PIP_NO_INDEX': '1',
                                                                        'PIP_DISABLE_PIP_VERSION_CHECK': '1'}
    subprocess.run([str(python), '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation', '-e', str(repo)],
                   check=True, env=env, cwd=tmp_path)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    found = subprocess.run([str(python), '-c', 'import density, train_asgan; print(density.__file__)'], check=True,
                           capture_output=True, text=True, env=env, cwd=elsewhere).stdout.strip()
    assert Path(found) == repo / 'density' / '__init__.py'
    for command in project['project']['scripts']:
        assert (venv / 'bin' / command).is_file(), command
    help_text = subprocess.run([str(venv / 'bin' / 'asgan-split-data'), '--help'], check=True, capture_output=True,
                               text=True, env=env, cwd=elsewhere).stdout
    assert '--root_path' in help_text
    failed = subprocess.run([str(venv / 'bin' / 'asgan-train'), 'batch_sise=3'], capture_output=True, text=True,
                            env=env, cwd=elsewhere)
    assert failed.returncode == 2 and failed.stderr.startswith('error: Unknown config key')
