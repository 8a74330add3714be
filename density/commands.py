"""The commands `pip install -e .` installs (pyproject.toml [project.scripts]): each runs a top-level script's
`main` under the density/cli.py conventions, as `python <script>.py ...` does."""
import importlib
import sys

from density import cli


def _command(module):
    def command():
        result = cli.run(importlib.import_module(module).main)  # e.g. train_classifier's results dict: success
        sys.exit(result if isinstance(result, int) else 0)
    command.__doc__ = f'`python {module}.py` as an installed command.'
    return command


train = _command('train_asgan')
generate = _command('generate')
evaluate = _command('evaluate')
edit = _command('edit')
classifier = _command('train_classifier')
train_vocoder = _command('train_vocoder')
split_data = _command('split_data')
extract = _command('hubert_feature_reader')
demo = _command('demo')
diagnose = _command('diagnose')
