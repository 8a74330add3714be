"""Training ASGAN: the optimisation step, EMA and logging (training), validation during training (validation),
the train_asgan.py command (train) and training diagnostics (diagnose)."""
