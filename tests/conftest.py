"""Shared pytest configuration: hypothesis profiles and the import path of the helpers.

Hypothesis profiles (pick one with the ``HYPOTHESIS_PROFILE`` environment variable;
the default is ``ci``):

- ``ci``: modest ``max_examples`` so the whole core suite stays within a few minutes
  on a small CI machine;
- ``dev``: the hypothesis default (100 examples per property);
- ``thorough``: 1000 examples per property, for hunting bugs before a release.

Every profile sets ``deadline=None``: the first call of a backend compiles kernels
(numba, CUDA) or builds cached structures, so per-example timings are meaningless.

The helper modules ``strategies.py`` and ``dense_reference.py`` live next to the
tests; this directory is put on ``sys.path`` so that any test file can write
``from strategies import csr_graphs`` whatever pytest's import mode.

Tests on the Cora data set take the ``cora_path`` fixture, the one place that knows
where the file is: ``$SPARSEGAT_CORA`` when set, else ``data/cora.npz`` in a
``shared`` folder beside the clone (``<repo>/../shared/data/cora.npz``). The
file's layout is described in ``docs/data.md``; without the file these tests skip.

Tests on the raw Planetoid files take the ``planetoid_path`` fixture: the folder of the
eight ``ind.cora.*`` files, ``$SPARSEGAT_PLANETOID`` when set, else
``<repo>/../shared/data/planetoid``; without them these tests skip.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

settings.register_profile("ci", max_examples=25, **_COMMON)
settings.register_profile("dev", max_examples=100, **_COMMON)
settings.register_profile("thorough", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


#: Where ``cora_path`` looks when ``$SPARSEGAT_CORA`` is not set: a ``shared`` folder beside the clone.
DEFAULT_CORA = Path(_HERE).resolve().parent.parent / "shared" / "data" / "cora.npz"


@pytest.fixture(scope="session")
def cora_path() -> Path:
    """The Cora ``.npz`` file (layout in ``docs/data.md``); skips the test when it is absent."""
    env = os.environ.get("SPARSEGAT_CORA")
    path = Path(env) if env else DEFAULT_CORA
    if not path.is_file():
        where = f"SPARSEGAT_CORA={env!r} is not a file" if env else f"{path} does not exist"
        pytest.skip(f"Cora data file not available ({where}); set SPARSEGAT_CORA to the path of cora.npz")
    return path


#: Where ``planetoid_path`` looks when ``$SPARSEGAT_PLANETOID`` is not set.
DEFAULT_PLANETOID = DEFAULT_CORA.parent / "planetoid"
_PLANETOID_FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


@pytest.fixture(scope="session")
def planetoid_path() -> Path:
    """The folder of the raw Cora files of the Planetoid release (``ind.cora.*``); skips when absent."""
    env = os.environ.get("SPARSEGAT_PLANETOID")
    path = Path(env) if env else DEFAULT_PLANETOID
    missing = [f"ind.cora.{f}" for f in _PLANETOID_FILES if not (path / f"ind.cora.{f}").is_file()]
    if missing:
        where = f"SPARSEGAT_PLANETOID={env!r}" if env else str(path)
        pytest.skip(f"raw Planetoid Cora files not available ({where} lacks {', '.join(missing)}); "
                    f"set SPARSEGAT_PLANETOID to their folder")
    return path
