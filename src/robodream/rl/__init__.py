"""Reinforcement learning with a world model (RAMP, GigaBrain-0.5M*): rewards, values, advantages,
and policy rollouts with takeover (HG-DAgger) that record intervention frames."""
