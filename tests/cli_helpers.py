"""Helpers shared by the CLI tests: run a robodream command in-process, check one-line errors."""

from __future__ import annotations

from typer.testing import CliRunner

from robodream.cli import app

runner = CliRunner()

#: Tiny policy flags for end-to-end CLI tests (seconds per run on 2 cores).
TINY_POLICY = ["--dim", "32", "--depth", "1", "--horizon", "8", "--n-action-steps", "4", "--video-stride", "4",
               "--action-expert-dim", "16", "--batch-size", "8"]


def run(*args, code: int = 0):
    """``robodream ARGS`` (each argument str()-ed); asserts the exit code and returns the result."""
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, f"{args}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    return res


def one_line_error(res, *needles: str) -> str:
    """Assert ``res`` printed one ``error:`` line, no traceback, containing every needle; return it."""
    err = res.output.strip()
    assert err.startswith("error:") and "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err
