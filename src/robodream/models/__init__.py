"""Shared model building blocks: transformer blocks with AdaLN, attention with masks and a
key/value cache, timestep embeddings, rectified flow."""
