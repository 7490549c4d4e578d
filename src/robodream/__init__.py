"""robodream: robot world models — data engine, world-action policies, Gaussian world models, RL."""

__version__ = "0.1.0"
