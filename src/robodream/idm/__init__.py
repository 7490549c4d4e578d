"""Inverse-dynamics model: labels videos (real or generated) with actions, the labeller of the
GigaWorld-0 data engine (DreamGen-style). See :mod:`robodream.idm.modeling`."""
