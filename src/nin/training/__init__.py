"""Training: the loop (d2l's `train_ch6`, loop.py) and what it stands on: one training step, the runtime (device,
precision, torchrun), checkpoints, the run directory and its record, guards, progress; sweeps and comparisons."""
