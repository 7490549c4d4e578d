"""The shared training loop and checkpointing."""
