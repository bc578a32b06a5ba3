"""The ``numba`` backend's room: fused, parallel CPU kernels (imported only when chosen).

- :mod:`.backend`: the backend function set over NumPy arrays, calling the kernels below;
- :mod:`.forward`: the row-parallel forward (online softmax, or two passes on small
  graphs), the weights kernel and the cosine unit vectors;
- :mod:`.backward`: the pack / source-side / destination-side backward passes;
- :mod:`.scores`: the six score functions, inlined into kernels specialised per score;
- :mod:`.dropout`: the splitmix64 keep/drop rule, bit for bit as :mod:`sparsegat.dropout`;
- :mod:`.fastexp`: an inlinable ``exp`` (no libm call in the inner loops);
- :mod:`.intrinsics`: software prefetch and bit casts (LLVM intrinsics);
- :mod:`.partition`: equal-work row chunks (independent of the thread count);
- :mod:`.dense`: the layers' CSR-feature product and the Adam update (the backend's
  optional ``csr_matmul`` and ``adam_update``).

Kernels are built per score on first use and compiled per argument types on
first call, with ``cache=True``; see ``docs/numba.md``.
"""
