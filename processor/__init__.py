"""Training loop and inference."""
