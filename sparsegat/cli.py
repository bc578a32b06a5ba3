"""The ``sparsegat`` command: ``sparsegat train ...``, ``sparsegat predict ...`` and ``sparsegat bench ...``."""

from __future__ import annotations

import os
import sys
from typing import Sequence

USAGE = """usage: sparsegat {train,predict,bench,warmup} [options]

  train   train a GAT on a node-classification data set (or a built-in synthetic graph)
  predict run a model saved by 'train --save' on a data set: classes and probabilities
  bench   time forward and backward of every available backend (and PyG where installed)
  warmup  compile the kernels ahead of time (once per machine), so that no first call pauses

Run 'sparsegat COMMAND --help' for the options of a command."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsegat`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "train":
        from .train import main as run
    elif command == "predict":
        from .predict import main as run
    elif command == "bench":
        from .bench.cli import main as run
    elif command == "warmup":
        from .warmup import main as run
    else:
        print(f"sparsegat: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


def console_main() -> None:
    """The console script: :func:`main`, then exit without the interpreter's teardown.

    Once Numba has compiled or loaded a kernel, tearing the interpreter down takes
    about 0.25 s (destroying Numba's and LLVM's objects), up to a tenth of a
    Cora training run. The command has written and closed everything it
    writes, so it flushes the standard streams and leaves with ``os._exit``.
    Calling :func:`main` from Python returns normally.
    """
    rc = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(rc)


if __name__ == "__main__":
    console_main()
