"""A digest of this package's source, baked into every kernel built by a factory.

Numba's on-disk cache (``cache=True``) is invalidated by a change of the
*kernel's own* source file only; a kernel that inlines helpers from another
file (``scores.py``, ``fastexp.py``, ``dropout.py``, ``intrinsics.py``) would
otherwise keep running stale machine code after those files change. The
factories in :mod:`.forward` and :mod:`.backward` close over
:data:`SOURCE_DIGEST`, and Numba keys cached code on the values of closure
variables, so any edit of any module of the package selects fresh code.
"""

from __future__ import annotations

import hashlib
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def _digest() -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(_HERE)):
        if name.endswith(".py"):
            with open(os.path.join(_HERE, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()[:16]


#: Digest of the package's ``*.py`` files (see the module docstring).
SOURCE_DIGEST = _digest()
