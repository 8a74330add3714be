"""Train the evaluation classifier: `python train_classifier.py train_csv=... valid_csv=...`
(density/evaluation/train_classifier.py)."""

from density.evaluation.train_classifier import main
from density.runtime.cli import command

if __name__ == "__main__":
    command(main)
