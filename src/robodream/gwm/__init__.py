"""Gaussian world model (GWM, arXiv 2508.17600): per-frame Gaussians, set VAE, latent dynamics."""
