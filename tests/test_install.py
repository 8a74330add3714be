"""pyproject.toml: `pip install .` puts only the `density` package and the asgan-* commands into site-packages
(no top-level modules such as `evaluate` that would shadow other packages), and the commands run from anywhere.

Offline: the fresh venv sees this venv's packages through a .pth file (setuptools included), and pip installs with
--no-index --no-deps --no-build-isolation. The repository is copied first, so the build writes nothing into it.
"""

import csv
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def installed_venv(tmp_path):
    """A venv with this checkout installed (not editable) -> (python, venv, environment)."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns("__pycache__", ".venv", "outputs", ".git", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    (Path(own) / "parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(repo),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    return python, venv, env, Path(own)


def test_pip_install_puts_only_the_package_and_the_commands_into_site_packages(tmp_path):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    python, venv, env, site_packages = installed_venv(tmp_path)
    (record,) = site_packages.glob("asgan-*.dist-info/RECORD")
    with open(record, newline="") as f:
        files = [row[0] for row in csv.reader(f)]
    tops = {f.split("/")[0] for f in files if not f.startswith("..")}
    assert tops == {"density", record.parent.name}, tops
    scripts = {Path(f).name for f in files if f.startswith("..")}
    assert scripts == set(project["project"]["scripts"]), scripts
    sources = {Path(f).parts[1] for f in files if f.startswith("density/") and len(Path(f).parts) > 2}
    assert {"runtime", "audio", "data", "features", "vocoders", "inference", "evaluation", "gan", "demo"} <= sources

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = subprocess.run(
        [str(python), "-c", "import density; print(density.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
    ).stdout.strip()
    assert Path(found) == site_packages / "density" / "__init__.py"
    for script in ("train_asgan", "evaluate", "hubconf"):
        missing = subprocess.run([str(python), "-c", f"import {script}"], capture_output=True, env=env, cwd=elsewhere)
        assert missing.returncode != 0, f"{script} is installed as a top-level module"
    help_text = subprocess.run(
        [str(venv / "bin" / "asgan-split-data"), "--help"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
    ).stdout
    assert "--root_path" in help_text
    failed = subprocess.run(
        [str(venv / "bin" / "asgan-train"), "batch_sise=3"], capture_output=True, text=True, env=env, cwd=elsewhere
    )
    assert failed.returncode == 2 and failed.stderr.startswith("error: Unknown config key")
