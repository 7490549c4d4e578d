"""Physically embodied Gaussians: a digital twin of particles (physics) and Gaussians (appearance) kept right by visual forces (issue 17)."""
