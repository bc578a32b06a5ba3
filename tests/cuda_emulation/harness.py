"""Build sparsegat's ``.cu`` kernels for the host CPU and launch them from Python.

The kernels are compiled with the host C++ compiler against ``cuda_emu.h`` (block
threads as OS threads, warp shuffles through an exchange buffer, see that header)
into shared libraries, one per batch of kernel instantiations, built in parallel and
cached by content hash in the system temp folder. :class:`EmulatedRuntime` is a
:class:`sparsegat.backends.cuda.launch.Runtime` over NumPy arrays, so the backend's
own orchestration (:func:`cuda_launch.forward` etc.) runs unchanged on top of it:
same segment plans, launch geometry, scratch buffers and argument types as on a GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from sparsegat.backends.cuda import launch as cuda_launch

HERE = Path(__file__).resolve().parent
EMU_HEADER = HERE / "cuda_emu.h"
REGISTRY_HEADER = HERE / "emu_registry.h"
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ("-std=c++17", "-O1", "-pthread", "-fPIC", "-shared", "-Wno-unknown-pragmas")
CACHE_DIR = Path(tempfile.gettempdir()) / "sparsegat-cuda-emu"

_CODES = {np.dtype(np.int32): "i4", np.dtype(np.int64): "i8", np.dtype(np.uint64): "u8",
          np.dtype(np.float32): "f4", np.dtype(np.float64): "f8"}
_CTYPES = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
           np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.float32): ctypes.c_float,
           np.dtype(np.float64): ctypes.c_double}


def _marshal(name: str, i: int, a: Any) -> tuple[str, Any]:
    """(type code, ctypes holder of the value) of launch argument ``i``, as CuPy passes it.

    Arrays pass their address ("*f4" etc.), NumPy scalars their value ("i4", "u8", ...);
    the registry checks the codes against the kernel's parameters and takes a "u8" zero
    (``launch.NULL``) for a null pointer. ``None`` is refused: CuPy before 14.0 passes it
    as a pointer to an empty slot, non-null garbage (cupy/cupy#9046).
    """
    if a is None:
        raise TypeError(f"{name}: argument {i} is None; CuPy < 14 passes None as a non-null "
                        f"pointer (cupy/cupy#9046); pass launch.NULL")
    if isinstance(a, np.ndarray):
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: argument {i} is not C-contiguous")
        return "*" + _CODES[a.dtype], ctypes.c_void_p(a.ctypes.data)
    if isinstance(a, np.generic) and a.dtype in _CTYPES:
        return _CODES[a.dtype], _CTYPES[a.dtype](a.item())
    raise TypeError(f"{name}: argument {i} is {type(a).__name__}; kernels take arrays or NumPy "
                    f"scalars of their exact C types (launch.NULL for an absent array)")


def compiler_available() -> bool:
    return shutil.which(CXX) is not None


def translation_unit(names: Sequence[str]) -> str:
    """C++ source instantiating ``names`` (name expressions) with a launch table."""
    src = cuda_launch.cuda_dir()
    lines = [f'#include "{src / f}"' for f in cuda_launch.SOURCE_FILES if f.endswith(".cu")]
    lines.append(f'#include "{REGISTRY_HEADER}"')
    lines.append("static const cuda_emu::Entry sg_emu_entries[] = {")
    lines += [f'  SG_EMU_ENTRY("{n}", {n}),' for n in names]
    lines.append("};")
    lines.append(f"static const int sg_emu_n = {len(names)};")
    lines.append("""
extern "C" int sg_emu_count() { return sg_emu_n; }
extern "C" const char* sg_emu_name(int i) { return sg_emu_entries[i].name; }
extern "C" int sg_emu_launch(const char* name, const unsigned* grid, const unsigned* block, int nargs,
                             void** args, const char** codes, char* err, int errlen) {
  for (int i = 0; i < sg_emu_n; ++i)
    if (std::strcmp(sg_emu_entries[i].name, name) == 0)
      return sg_emu_entries[i].fn(grid, block, nargs, args, codes, err, errlen);
  std::snprintf(err, errlen, "kernel %s is not compiled into this library", name);
  return 3;
}
""")
    return "\n".join(lines)


def _digest(tu: str) -> str:
    h = hashlib.sha256()
    h.update(tu.encode())
    h.update(" ".join((CXX,) + CXXFLAGS).encode())
    for path in [EMU_HEADER, REGISTRY_HEADER] + [cuda_launch.cuda_dir() / f for f in cuda_launch.SOURCE_FILES]:
        h.update(path.read_bytes())
    try:
        h.update(subprocess.run([CXX, "--version"], capture_output=True, text=True).stdout.encode())
    except OSError:
        pass
    return h.hexdigest()[:24]


def build_library(names: Sequence[str], cache_dir: Path = CACHE_DIR) -> tuple[Path, float]:
    """Compile one shared library holding ``names``; returns (path, seconds spent compiling)."""
    tu = translation_unit(names)
    cache_dir.mkdir(parents=True, exist_ok=True)
    lib = cache_dir / f"sg_emu_{_digest(tu)}.so"
    if lib.exists():
        return lib, 0.0
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cpp = Path(tmp) / "tu.cpp"
        cpp.write_text(tu)
        out = Path(tmp) / "lib.so"
        cmd = [CXX, *CXXFLAGS, "-include", str(EMU_HEADER), "-o", str(out), str(cpp)]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"emulated build failed: {' '.join(cmd)}\n{res.stderr[-8000:]}")
        os.replace(out, lib)
    return lib, seconds


def build_libraries(names: Iterable[str], jobs: int | None = None,
                    cache_dir: Path = CACHE_DIR) -> tuple[list[Path], float]:
    """Compile ``names`` into ``jobs`` libraries in parallel; (paths, wall seconds)."""
    names = sorted(set(names))
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(names)))
    batches = [names[i::jobs] for i in range(jobs)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda b: build_library(b, cache_dir), batches))
    return [p for p, _ in results], time.perf_counter() - t0


class EmulatedRuntime:
    """A :class:`cuda_launch.Runtime` running the kernels on the CPU over NumPy arrays."""

    xp = np

    def __init__(self, libraries: Sequence[Path]) -> None:
        self._libs = []
        self._by_name: dict[str, Any] = {}
        for path in libraries:
            lib = ctypes.CDLL(str(path))
            lib.sg_emu_name.restype = ctypes.c_char_p
            lib.sg_emu_launch.restype = ctypes.c_int
            self._libs.append(lib)
            for i in range(lib.sg_emu_count()):
                self._by_name[lib.sg_emu_name(i).decode()] = lib
        #: (name, grid, block) of every launch, for tests of the geometry.
        self.log: list[tuple[str, tuple, tuple]] = []

    @property
    def names(self) -> set[str]:
        return set(self._by_name)

    def prepare(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self._by_name]
        if missing:
            raise KeyError(f"kernels not compiled for emulation: {missing}; add the configuration "
                           f"to the test module's list of emulated configurations")

    @staticmethod
    def pointer(a: np.ndarray) -> int:
        return a.ctypes.data

    def launch(self, name: str, grid: tuple, block: tuple, args: tuple) -> None:
        if any(int(x) < 1 for x in grid) or any(int(x) < 1 for x in block):
            raise ValueError(f"{name}: empty launch grid={grid} block={block}")
        if int(grid[1]) > 65535 or int(grid[2]) > 65535 or int(grid[0]) > 2**31 - 1:
            raise ValueError(f"{name}: grid {grid} exceeds CUDA limits")
        marshalled = [_marshal(name, i, a) for i, a in enumerate(args)]
        codes = [code for code, _ in marshalled]
        holders = [holder for _, holder in marshalled]  # alive until the launch returns
        n = len(args)
        argv = (ctypes.c_void_p * n)(*[ctypes.addressof(h) for h in holders])
        cv = (ctypes.c_char_p * n)(*[c.encode() for c in codes])
        g = (ctypes.c_uint * 3)(*[int(x) for x in grid])
        b = (ctypes.c_uint * 3)(*[int(x) for x in block])
        err = ctypes.create_string_buffer(512)
        lib = self._by_name.get(name)
        if lib is None:
            raise KeyError(f"kernel {name} is not compiled for emulation")
        rc = lib.sg_emu_launch(name.encode(), g, b, n, argv, cv, err, 512)
        if rc != 0:
            raise TypeError(f"{name}: {err.value.decode()}")
        self.log.append((name, tuple(int(x) for x in grid), tuple(int(x) for x in block)))
