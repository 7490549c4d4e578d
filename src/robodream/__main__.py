"""``python -m robodream`` (and ``torchrun ... -m robodream train ...``): the robodream CLI."""

from robodream.cli import app

app(prog_name="robodream")
