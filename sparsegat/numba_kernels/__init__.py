"""Numba kernels of the ``numba`` backend (imported only when that backend is loaded).

- :mod:`.forward`: the row-parallel forward (online softmax) and weights kernels, and
  the cosine unit vectors;
- :mod:`.backward`: the pack / source-side / destination-side backward passes;
- :mod:`.scores`: the six score functions, inlined into kernels specialised per score;
- :mod:`.dropout`: the splitmix64 keep/drop rule, bit for bit as :mod:`sparsegat.dropout`;
- :mod:`.fastexp`: an inlinable ``exp`` (no libm call in the inner loops);
- :mod:`.intrinsics`: software prefetch and bit casts (LLVM intrinsics);
- :mod:`.partition`: equal-work row chunks (independent of the thread count).

Kernels are built per score on first use and compiled per argument types on
first call, with ``cache=True``; see ``docs/numba.md``.
"""
