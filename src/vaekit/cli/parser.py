"""The `vaekit` command line: the parser, the one image/text dispatch, exit statuses, the process's exit.

Every user-facing problem is a `VaekitError`, printed as one line on stderr with exit status 2;
Ctrl-C is 130; any other exception is an internal error, one line and status 1. A traceback is
shown only with `--debug`. The commands live in one module per group (train, generate, evaluate,
tools), each a few lines over the library; each module registers its own.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys

import vaekit.cli.evaluate as evaluate
import vaekit.cli.generate as generate
import vaekit.cli.text as text
import vaekit.cli.tools as tools
import vaekit.cli.train as train
from vaekit._version import version
from vaekit.errors import VaekitError
from vaekit.progress import console

EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, said once (the help texts do not repeat it);
    options without one (None, False) say nothing."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default == [] or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vaekit",
        description="Train, evaluate and inspect variational autoencoders (JAX, Flax NNX, Optax).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"vaekit {version()}", help="print the version and exit")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help):
        return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)

    for group in (train, generate, evaluate, tools):
        group.register(command)
    return p


def handler_for(args):
    """The function that runs `args.command`. The one place the CLI tells text runs from image
    runs: a command in `text.HANDLERS` runs its text handler on a run trained on token data (by the
    run's data spec, never the model's name), and its image handler, after refusing the text-only
    flags in one line, on any other run."""
    for_text = text.HANDLERS.get(args.command)
    if for_text is None:
        return args.func
    if text.is_text_run(args.run):
        return for_text
    text.reject_text_flags(args, args.command)
    return args.func


def main(argv: list[str] | None = None) -> int:
    import logging

    args = build_parser().parse_args(argv)
    logger = logging.getLogger("vaekit")  # only vaekit's own messages; JAX's INFO chatter stays off
    logger.setLevel(logging.INFO)
    log_handler = _rich_handler()
    logger.addHandler(log_handler)  # removed again on return, so main() can be called repeatedly
    logger.propagate = False
    try:
        return _run(args)
    except KeyboardInterrupt:  # a Ctrl-C after `_run` dealt with the first one (its message is printed)
        return EXIT_INTERRUPTED
    finally:
        logger.removeHandler(log_handler)


def _run(args) -> int:
    try:
        handler_for(args)(args)
    except VaekitError as e:
        if args.debug:
            raise
        print(f"vaekit: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as e:
        run_dir = getattr(e, "run_dir", None)
        if run_dir is not None:
            print(f"vaekit: interrupted; continue with `vaekit train --resume {run_dir}`", file=sys.stderr)
        elif args.command == "train":
            print("vaekit: interrupted before training started; nothing was kept", file=sys.stderr)
        else:
            print("vaekit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # an internal error: one line unless --debug
        if args.debug:
            raise
        print(f"vaekit: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL
    return 0


def _rich_handler():
    from rich.logging import RichHandler

    return RichHandler(console=console(stderr=True), show_time=False, show_path=False, markup=False)


def entry() -> None:
    """The `vaekit` command (and `python -m vaekit.cli`): `skip_teardown` first (so that its atexit
    handler runs after every other), the process's CPU settings (`vaekit.runtime.configure`, before
    JAX is imported), `main`, then `exit_now` with its status."""
    from vaekit import runtime

    skip_teardown()
    runtime.configure()
    exit_now(main())


# The status `exit_now` was called with; None until then (a process leaving another way exits in full).
_exit_status: int | None = None


def skip_teardown() -> None:
    """Let `exit_now` end the process without the interpreter's teardown.

    Python's own exit clears every module and collects every object before the process ends:
    0.35-0.5 s once JAX, Flax, Orbax and matplotlib are loaded: 4% of a warm 10-epoch mnist-mlp
    run, 15% of a warm one-epoch run on 1,000 images (docs/benchmarks.md). A command has closed
    what it wrote by then (run files are written atomically; the trainer closes its checkpointer and
    TensorBoard writer), so only the teardown is skipped: `exit_now` exits as usual (`sys.exit`), and
    Python joins the threads that are not daemons (waking idle executor workers) and runs the atexit
    handlers, last-registered first (JAX's clean-up, jax.distributed's shutdown). The handler this
    registers runs after all of those registered later, i.e. after every one when this is called
    before anything else registers one (the start of `entry`); it flushes stdout and stderr and ends
    the process with `os._exit`. A process that leaves any other way (`--help`, a `--debug`
    traceback) exits in full. With JAX, Flax, Orbax, matplotlib and tensorboardX loaded, from
    `exit_now` to the end of the process (7 alternating processes, a busy 2-core machine): 0.09 s,
    against 0.14 s when vaekit called `threading._shutdown` and `atexit._run_exitfuncs` itself and
    1.8 s with the teardown.
    """
    atexit.register(_end_without_teardown)


def exit_now(code: int) -> None:
    """Leave with status `code`; with `skip_teardown` called earlier, without the teardown.
    `main` itself returns normally, for callers in Python (the tests)."""
    global _exit_status
    _exit_status = code
    sys.exit(code)


def _end_without_teardown() -> None:
    if _exit_status is None:  # not leaving through exit_now: the interpreter's full exit
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(_exit_status)
