"""Exceptions that robodream raises for bad input.

Every error a user can cause (a wrong path, a foreign dataset, a checkpoint of another
model, an unknown task) is one of these. The CLI prints ``str(err)`` as a single line and
exits with status 2; library callers can catch :class:`RobodreamError`.
"""

from __future__ import annotations


class RobodreamError(Exception):
    """Base class of all user-facing errors; the message is one line naming the problem."""


class UnknownTaskError(RobodreamError, ValueError):
    """A task name that the simulator does not know."""


class DatasetError(RobodreamError):
    """A dataset directory that is missing, corrupt, foreign or incompatible."""


class CheckpointError(RobodreamError):
    """A run directory or checkpoint that is missing, corrupt or from another model type."""


class ConfigError(RobodreamError, ValueError):
    """An inconsistent configuration (e.g. image size or action dimension mismatch)."""


class TrainingError(RobodreamError):
    """Training cannot go on (e.g. a non-finite loss); the run's last checkpoint is intact."""
