"""torch.hub entry points (density/inference/hub.py).

model = torch.hub.load('path/to/this/repo', 'asgan_hubert_sc09_6', source='local')  # or '<owner>/<repo>'
audio = model.unconditional_generate(4)  # (4, 16000) float waveforms at 16 kHz
"""

from density.inference.hub import asgan_from_checkpoint, asgan_hubert_sc09_6, hubert_base, hubert_hifigan

dependencies = ["torch", "numpy", "scipy", "soundfile", "omegaconf", "tqdm"]
__all__ = ["asgan_from_checkpoint", "asgan_hubert_sc09_6", "hubert_base", "hubert_hifigan"]
