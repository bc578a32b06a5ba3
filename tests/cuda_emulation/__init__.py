"""CUDA emulation for the host compiler: ``cuda_emu.h`` and the Python build/launch harness."""
