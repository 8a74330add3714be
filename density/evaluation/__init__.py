"""Measuring: the evaluation classifier (classifier), the paper's metrics as a library (scoring) and as the
evaluate.py command (evaluate), training a classifier (train_classifier) and scoring vocoders (vocoders). Imports no
GAN training code."""
