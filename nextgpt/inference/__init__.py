"""Inference: load a checkpoint, answer a conversation, render the signal spans into images, videos and sounds."""
