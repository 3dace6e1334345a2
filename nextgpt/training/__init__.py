"""Training: stage setup, loss functions, the train loop and checkpoints."""
