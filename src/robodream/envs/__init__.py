"""Meta-World environments with headless rendering and camera geometry."""
