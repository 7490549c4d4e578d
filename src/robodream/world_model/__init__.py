"""GigaWorld-0-Video: the action-conditioned latent video world model (arXiv 2511.19861)."""
