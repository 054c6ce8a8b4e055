"""What the command-line tools share: a user's mistake is one line on stderr and exit status 2, Ctrl-C is 130,
and a checkpoint may be named by its file or by the run folder holding it."""
import sys
from pathlib import Path

from .errors import UserError


def run_main(run, args):
    """run(args)'s exit status, with UserError and Ctrl-C turned into one line and 2 or 130."""
    try:
        return run(args)
    except UserError as e:
        print(f"fastvae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastvae: interrupted", file=sys.stderr)
        return 130


def checkpoint_path(path):
    """`path` itself, or its checkpoint.npz when it is a run folder."""
    path = Path(path)
    return path / "checkpoint.npz" if path.is_dir() else path
