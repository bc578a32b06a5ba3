"""The ``sparsegat`` command: ``sparsegat train ...`` and ``sparsegat bench ...``."""

from __future__ import annotations

import sys
from typing import Sequence

USAGE = """usage: sparsegat {train,bench} [options]

  train   train a GAT on a node-classification data set (or a built-in synthetic graph)
  bench   time forward and backward of every available backend (and PyG where installed)

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
    elif command == "bench":
        from .bench.cli import main as run
    else:
        print(f"sparsegat: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
