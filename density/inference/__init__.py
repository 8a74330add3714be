"""Using a trained ASGAN: loading it with its vocoder (asgan), the torch.hub entry points (hub), latent-space tools
(latent), and the generate.py / edit.py commands."""
