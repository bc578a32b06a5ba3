"""The ``cupy`` backend's room: CUDA kernels driven through CuPy.

- :mod:`.backend`: the backend function set over CuPy arrays (imports CuPy);
- :mod:`.launch`: launch planning and orchestration without CuPy (segment plans,
  geometry, scratch buffers, argument C types), shared with the CPU emulation tests;
- ``common.cuh``, ``forward.cu``, ``backward.cu``: the kernel sources (package data).

Importing this package imports nothing from CuPy; the registry imports
:mod:`.backend` only when CuPy arrays or ``backend="cupy"`` are used.
"""
