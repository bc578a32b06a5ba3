"""The CUDA sources compile for real GPUs: with nvcc for sm_80 and sm_90, and with NVRTC
exactly as the ``cupy`` backend compiles them (same assembled source, name expressions,
and options: ours plus the ones CuPy adds, ``launch.CUPY_ADDED_OPTIONS``). No GPU is
needed; each check skips cleanly when its compiler is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsegat.backends.cuda import launch as cl
from sparsegat.spec import SCORES

NVCC = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                if os.environ.get("CUDA_HOME") else None)
needs_nvcc = pytest.mark.skipif(NVCC is None or not os.path.exists(NVCC), reason="nvcc not found")
ARCHS = ("sm_80", "sm_90")
#: ``launch.CUPY_ADDED_OPTIONS`` as nvcc takes them: ``-ftz=true``; nvcc has no
#: ``--device-as-default-execution-space`` (every function here is annotated anyway).
NVCC_CUPY_FLAGS = ("-ftz=true",)
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
I32, I64 = np.dtype(np.int32), np.dtype(np.int64)


def compile_names() -> list[str]:
    """Instantiations compiled by these tests: every score in (float, int) and
    (double, long long) with vector loads, plus scalar loads and other tiles in the
    mixed dtype pairs."""
    names: set[str] = set()
    for score in SCORES:
        names |= set(cl.config_kernel_names(score, F32, I32, cl.FeatureGeometry(4, 32, 1)))
        names |= set(cl.config_kernel_names(score, F64, I64, cl.FeatureGeometry(2, 32, 4)))
    for score in ("gatv2", "cosine"):
        names |= set(cl.config_kernel_names(score, F32, I64, cl.FeatureGeometry(1, 8, 2)))
        names |= set(cl.config_kernel_names(score, F64, I32, cl.FeatureGeometry(1, 1, 1)))
    return sorted(names)


def instantiation_unit(source: str, names: list[str]) -> str:
    """A translation unit that instantiates ``names`` from ``source``, as name_expressions do."""
    return (f'#include "{cl.cuda_dir() / source}"\n'
            "void* sg_instantiated[] = {\n" + ",\n".join(f"    (void*)&{n}" for n in names) + "\n};\n")


def _run_all(cmds: list[list[str]]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    out = []
    for cmd, p in zip(cmds, procs):
        stdout, stderr = p.communicate()
        out.append(subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
    return out


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_every_source_compiles_with_nvcc(arch, tmp_path):
    names = compile_names()
    sources = sorted({cl.KERNEL_FILES[cl.kernel_base_name(n)] for n in names})
    assert sources == sorted(f for f in cl.SOURCE_FILES if f.endswith(".cu"))
    assert sorted(p.name for p in cl.cuda_dir().glob("*.cu")) == sources, "a .cu file is not covered"
    cmds = []
    for src in sources:
        tu = tmp_path / f"inst_{src}"
        tu.write_text(instantiation_unit(src, [n for n in names if cl.KERNEL_FILES[cl.kernel_base_name(n)] == src]))
        cmds.append([NVCC, "-std=c++17", *NVCC_CUPY_FLAGS, f"-arch={arch}", "--cubin", "-Werror",
                     "all-warnings", "-o", str(tmp_path / f"{src}.cubin"), str(tu)])
    for res in _run_all(cmds):
        assert res.returncode == 0, f"{' '.join(res.args)}\n{res.stderr[-6000:]}"
        assert Path(res.args[res.args.index("-o") + 1]).stat().st_size > 0


@needs_nvcc
def test_kernels_use_no_atomics(tmp_path):
    """Determinism by construction: the PTX of every kernel has no atomic or reduction
    instruction (atom.*, red.*), floating-point or otherwise."""
    src = tmp_path / "all.cu"
    src.write_text(cl.module_source() + "\nvoid* sg_instantiated[] = {\n"
                   + ",\n".join(f"    (void*)&{n}" for n in compile_names()) + "\n};\n")
    ptx = tmp_path / "all.ptx"
    res = subprocess.run([NVCC, "-std=c++17", *NVCC_CUPY_FLAGS, "-arch=sm_80", "--ptx", "-o", str(ptx),
                          str(src)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-6000:]
    text = ptx.read_text()
    assert text.count(".entry") >= len(compile_names())
    assert re.search(r"\.ftz\.f32\b", text), "float arithmetic not compiled with -ftz=true"
    found = sorted(set(re.findall(r"^\s*(?:@%p\d+\s+)?((?:atom|red)\.[\w.]+)", text, flags=re.M)))
    assert not found, f"atomics in the kernels: {found}"


# ---------------------------------------------------------------------- NVRTC, as the backend does
def _find_nvrtc() -> str | None:
    candidates = [os.environ.get("SPARSEGAT_NVRTC", "")]
    for base in filter(None, [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]):
        candidates += sorted(glob.glob(os.path.join(base, "lib64", "libnvrtc.so*")))
    for site in sys.path:
        candidates += sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        candidates.append(found)
    for c in candidates:
        if c and "builtins" not in os.path.basename(c):
            try:
                ctypes.CDLL(c)
                return c
            except OSError:
                continue
    return None


NVRTC = _find_nvrtc()


def nvrtc_compile(source: str, names: list[str], options: tuple[str, ...]) -> dict[str, str]:
    """Compile with NVRTC like cupy.RawModule; return name expression -> lowered name."""
    lib = ctypes.CDLL(NVRTC)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    prog = ctypes.c_void_p()

    def check(rc: int, what: str) -> None:
        if rc != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value + 1)
            lib.nvrtcGetProgramLog(prog, log)
            raise AssertionError(f"{what}: {lib.nvrtcGetErrorString(rc).decode()}\n{log.value.decode()[-6000:]}")

    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"sparsegat.cu", 0, None, None),
          "nvrtcCreateProgram")
    try:
        for n in names:
            check(lib.nvrtcAddNameExpression(prog, n.encode()), f"nvrtcAddNameExpression({n})")
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        check(lib.nvrtcCompileProgram(prog, len(options), opts), "nvrtcCompileProgram")
        lowered = {}
        for n in names:
            ptr = ctypes.c_char_p()
            check(lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(ptr)), f"nvrtcGetLoweredName({n})")
            lowered[n] = ptr.value.decode()
        size = ctypes.c_size_t()
        check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        assert size.value > 0
        return lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.skipif(NVRTC is None, reason="libnvrtc not found (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("config", [("dot", F32, I32, (4, 32, 1)), ("gatv2", F64, I64, (2, 32, 4)),
                                    ("cosine", F32, I64, (1, 8, 2)), ("additive", F64, I32, (1, 1, 1)),
                                    ("euclidean", F32, I32, (4, 16, 1)), ("scaled_dot", F64, I64, (1, 4, 1))],
                         ids=lambda c: f"{c[0]}-{c[1].name}-{c[2].name}")
def test_backend_module_compiles_with_nvrtc(arch, config):
    """The exact RawModule of one configuration: module_source(), NVRTC_OPTIONS plus what
    CuPy adds (CUPY_ADDED_OPTIONS and the architecture, spelled as CuPy does), the name
    expressions of config_kernel_names(); no headers beyond NVRTC's own."""
    score, dtype, index_dtype, (vec, lpe, nacc) = config
    names = cl.config_kernel_names(score, dtype, index_dtype, cl.FeatureGeometry(vec, lpe, nacc))
    options = cl.NVRTC_OPTIONS + cl.CUPY_ADDED_OPTIONS + (f"-arch={arch}",)
    lowered = nvrtc_compile(cl.module_source(), names, options)
    assert set(lowered) == set(names)
    assert all(v.startswith("_Z") for v in lowered.values())


def test_compile_options_are_cupys():
    """-ftz=true (CuPy adds it to every RawModule) is what the nvcc checks and the emulation
    (MXCSR FTZ/DAZ for float kernels) reproduce; our --std stands (CuPy adds one only when
    none is given)."""
    assert cl.CUPY_ADDED_OPTIONS == ("-ftz=true", "--device-as-default-execution-space")
    assert set(NVCC_CUPY_FLAGS) == set(cl.CUPY_ADDED_OPTIONS) - {"--device-as-default-execution-space"}
    assert any(o.startswith("--std=") for o in cl.NVRTC_OPTIONS)
    emu = (Path(__file__).parent / "cuda_emulation" / "cuda_emu.h").read_text()
    assert "_mm_setcsr" in emu and "0x8040" in emu


def test_module_source_inlines_every_include():
    src = cl.module_source()
    assert "#include" not in src
    for kernel in cl.KERNEL_FILES:
        assert re.search(rf"\b{kernel}\s*\(", src), kernel


# ---------------------------------------------------------------------- shared numbering, no CuPy import
def test_cuda_score_enum_is_the_shared_score_codes():
    """``common.cuh`` numbers the scores as :data:`sparsegat.spec.SCORE_CODES` (the Numba kernels
    use the same table), so the name expressions pick the kernel of the score asked for."""
    from sparsegat.spec import SCORE_CODES

    text = (cl.cuda_dir() / "common.cuh").read_text()
    enum = re.search(r"enum\s*:\s*int\s*\{([^}]*)\}", text).group(1)
    codes = {name.strip().lower(): int(value) for name, value in
             (item.split("=") for item in enum.split(",") if item.strip())}
    assert codes == SCORE_CODES


def test_orchestration_does_not_import_cupy():
    code = ("import sys, sparsegat, sparsegat.backends.cuda.launch; "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
