"""Feature extraction: HuBERT layer-6 features or log-mels from audio (extract), and the fairseq HuBERT
checkpoint reader (fairseq_checkpoint)."""
