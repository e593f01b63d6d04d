"""The run loop of every mode (train, evaluate, predict, export) with its checkpoints, losses and optimizer."""
