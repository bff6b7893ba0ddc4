"""What the command modules share: loading a run, the run arguments, one-line argument checks.

`load` is the one place the CLI turns a run directory into a `Run`.
"""

from __future__ import annotations

from vaekit.errors import VaekitError


def load(args):
    """The run of a command's RUN argument at its --checkpoint (model built, weights restored)."""
    from vaekit.runs.run import load_run

    return load_run(args.run, checkpoint=args.checkpoint)


def run_arg(sp) -> None:
    """RUN and --checkpoint, the arguments of every command that loads a trained model."""
    sp.add_argument("run", help="run directory")
    sp.add_argument("--checkpoint", default="best", choices=("best", "latest"),
                    help="which checkpoint to load: best validation value, or the last saved")


def positive(value, flag: str) -> None:
    """One line when a count or scale given as `flag` is not positive."""
    if value <= 0:
        raise VaekitError(f"{flag} must be positive, got {value}")


def check_split(split: str) -> None:
    if split not in ("train", "val", "test"):
        raise VaekitError(f"--split must be train, val or test, got '{split}'")
