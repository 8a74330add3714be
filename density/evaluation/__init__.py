"""Measuring: the evaluation classifier (classifier), the paper's metrics on a model or wavs (evaluate), training
a classifier (train_classifier) and scoring vocoders (vocoders). Imports no GAN training code."""
