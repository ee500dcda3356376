"""Runnable examples: ``python -m examples.resnet`` etc. from the repository root."""
