"""A tiny built-in digits corpus, its split CSVs and a briefly trained CPU classifier, for the evaluation tests."""

from density.data import splits as split_data
from density.data.digits import make_digits_corpus
from density.evaluation import train_classifier


def make_tiny_digits(folder):
    """12 voices x 10 words (120 clips; 80 train, 20 valid, 20 test by voice variant) -> folder of sc09-*.csv."""
    make_digits_corpus(folder / "digits", n_speakers=12, per_word=1, valid_frac=0.2, test_frac=0.2, progress=False)
    splits = folder / "splits"
    split_data.main(["--root_path", str(folder / "digits"), "--sc09_only", "true", "--out_dir", str(splits)])
    return splits


def classifier_args(splits, run, *extra):
    return [
        f"train_csv={splits / 'sc09-train.csv'}",
        f"valid_csv={splits / 'sc09-valid.csv'}",
        f"test_csv={splits / 'sc09-test.csv'}",
        f"checkpoint_path={run}",
        "batch_size=16",
        *extra,
    ]


def train_tiny_classifier(splits, run, steps=40):
    """A CPU classifier trained for `steps` steps -> path of its classifier_best.pt."""
    train_classifier.main(classifier_args(splits, run, f"max_steps={steps}", "validation_interval=20"))
    return run / train_classifier.BEST
