"""HuBERT layer-L features: `python hubert_feature_reader.py --root DIR --out DIR --type hubert_L6 --checkpoint F`
(density/features/extract.py). `from hubert_feature_reader import HubertFeatureReader` keeps working for code
written against the reference; the classes live in density/features/hubert.py."""

from density.features.extract import main
from density.features.hubert import Featurizer, HubertFeatureReader
from density.runtime.cli import command

__all__ = ["Featurizer", "HubertFeatureReader", "main"]

if __name__ == "__main__":
    command(main)
