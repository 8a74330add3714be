"""Vocoders (features -> 16 kHz audio): HiFi-GAN, iSTFT and Griffin-Lim (vocoder), their training parts (training)
and the train_vocoder.py command (train). Imports no GAN training code."""
