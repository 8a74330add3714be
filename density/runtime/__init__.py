"""Run infrastructure: command-line conventions, atomic file I/O, downloads, checkpoint files, the run harness
(locks, stop signals, seeding) and training engines. Imports no model code."""
