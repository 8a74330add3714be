"""asgan: AudioStyleGAN models, data and training parts."""
