"""Training (notebook 06): config and command line, assembling a run, its steps and loop, checkpoints and resume."""
