"""Training, evaluation and checkpoints, one loop for both models."""
