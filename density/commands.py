"""The commands `pip install .` installs (pyproject.toml [project.scripts]): each runs a command module's `main`
under the density/runtime/cli.py conventions, as `python <script>.py ...` does in a checkout."""

import importlib

from density.runtime.cli import command


def _command(module):
    def run():
        command(importlib.import_module(module).main)  # imported when run: each command loads only what it needs

    run.__doc__ = f"`python -m {module}` as an installed command."
    return run


train = _command("density.gan.train")
generate = _command("density.inference.generate")
evaluate = _command("density.evaluation.evaluate")
edit = _command("density.inference.edit")
classifier = _command("density.evaluation.train_classifier")
train_vocoder = _command("density.vocoders.train")
split_data = _command("density.data.splits")
extract = _command("density.features.extract")
demo = _command("density.demo.pipeline")
diagnose = _command("density.gan.diagnose")
studio = _command("density.studio.app")
