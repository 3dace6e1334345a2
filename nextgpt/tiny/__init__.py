"""Tiny checkpoints in the real formats (HF LLaMA folder, ImageBind `.pth`, diffusers folders) for CPU runs and tests."""
