// A small CUDA emulator for the host C++ compiler, for testing sparsegat's kernels
// on machines without a GPU.
//
// Compile a .cu file with
//   g++ -std=c++17 -O1 -pthread -include tests/cuda_emulation/cuda_emu.h -x c++ file.cu
// and launch kernels with cuda_emu::launch(grid, block, &kernel<...>, args...).
//
// What is emulated, and how:
//   * every thread of a block is a real OS thread (std::thread); blocks run one
//     after another on the same team of threads, so `__shared__` variables can be
//     function-local statics;
//   * threadIdx, blockIdx, blockDim, gridDim are thread_local variables;
//   * __syncthreads() is a barrier over the block's live threads;
//   * warps are 32 consecutive threads (linear thread id); __shfl_sync,
//     __shfl_xor_sync, __shfl_up_sync, __shfl_down_sync, __ballot_sync,
//     __any_sync, __all_sync and __syncwarp go through a per-warp exchange buffer
//     (double-buffered) and a per-warp barrier, so a shuffle returns exactly the
//     value the source lane passed in the same call;
//   * a thread that returns from the kernel leaves its warp's and block's barriers
//     (as exited threads do on a GPU), so whole warps may exit early;
//   * a few math functions and intrinsics (rsqrt, __expf, __ldg, ...);
//   * -ftz=true, which CuPy adds to every RawModule compile: on x86 the threads of a
//     kernel that takes float arguments run with MXCSR's FTZ and DAZ bits set, so
//     float32 subnormal inputs and results are zero, as on the GPU (see
//     set_subnormal_flushing for why double kernels keep their subnormals).
// What is not: partial-warp shuffles (every live lane of the warp must take part
// in every warp collective, with any mask), dynamic shared memory, atomics (there
// are none on purpose: sparsegat's kernels are deterministic without them, and a
// kernel that used one would fail to compile here), streams, and timing.
//
// A barrier that waits longer than CUDA_EMU_TIMEOUT_S seconds (default 120)
// reports a deadlock (a warp collective not reached by every lane) and aborts.

#ifndef SPARSEGAT_CUDA_EMU_H
#define SPARSEGAT_CUDA_EMU_H

#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif
#if defined(__linux__)
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

// ------------------------------------------------------------------ language
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ static const
// __restrict__ is a g++ keyword already.

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace cuda_emu {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda_emu: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

inline std::chrono::seconds barrier_timeout() {
  static const long s = [] {
    const char* env = std::getenv("CUDA_EMU_TIMEOUT_S");
    return env ? std::atol(env) : 120L;
  }();
  return std::chrono::seconds(s > 0 ? s : 120);
}

// Waiting for a generation counter to move on: spin with sched_yield for a while
// (with more threads than cores, yielding hands the core to the threads being waited
// for), then sleep on a futex (Linux) or a condition variable (elsewhere).
#if defined(__linux__)
inline int spin_count() {
  static const int n = [] {
    const char* env = std::getenv("CUDA_EMU_SPIN");
    return env ? std::atoi(env) : 64;
  }();
  return n;
}

inline void gen_wait(std::atomic<unsigned>& gen, unsigned old) {
  for (int i = 0, n = spin_count(); i < n; ++i) {
    if (gen.load(std::memory_order_acquire) != old) return;
    sched_yield();
  }
  const auto deadline = std::chrono::steady_clock::now() + barrier_timeout();
  while (gen.load(std::memory_order_acquire) == old) {
    struct timespec ts = {1, 0};
    syscall(SYS_futex, reinterpret_cast<unsigned*>(&gen), FUTEX_WAIT_PRIVATE, old, &ts, nullptr, 0);
    if (std::chrono::steady_clock::now() > deadline)
      fail("deadlock: a barrier or warp collective was not reached by every live thread");
  }
}
inline void gen_wake(std::atomic<unsigned>& gen) {
  syscall(SYS_futex, reinterpret_cast<unsigned*>(&gen), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
}
#else
inline void gen_wait(std::atomic<unsigned>& gen, unsigned old) {
  const auto deadline = std::chrono::steady_clock::now() + barrier_timeout();
  while (gen.load(std::memory_order_acquire) == old) {
    std::this_thread::yield();
    if (std::chrono::steady_clock::now() > deadline)
      fail("deadlock: a barrier or warp collective was not reached by every live thread");
  }
}
inline void gen_wake(std::atomic<unsigned>&) {}
#endif

// A reusable barrier whose participants can leave (drop), with an optional action run
// by the last thread to arrive, before anyone is released. The bookkeeping is under
// a mutex (held for a few instructions); waiting is on the generation counter.
class Barrier {
 public:
  explicit Barrier(int n) : count_(n) {}
  template <typename F>
  void arrive_and_wait(F&& on_complete) {
    unsigned old;
    {
      std::lock_guard<std::mutex> lk(mu_);
      old = gen_.load(std::memory_order_relaxed);
      if (++arrived_ >= count_) {
        on_complete();
        release();
        return;
      }
    }
    gen_wait(gen_, old);
  }
  void arrive_and_wait() {
    arrive_and_wait([] {});
  }
  void drop() {
    std::lock_guard<std::mutex> lk(mu_);
    --count_;
    if (arrived_ > 0 && arrived_ >= count_) release();
  }
  // Only while no thread uses the barrier.
  void reset(int n) {
    count_ = n;
    arrived_ = 0;
  }

 private:
  void release() {  // with mu_ held
    arrived_ = 0;
    gen_.fetch_add(1u, std::memory_order_acq_rel);
    gen_wake(gen_);
  }
  std::mutex mu_;
  std::atomic<unsigned> gen_{0};
  int count_;
  int arrived_ = 0;
};

struct Warp {
  explicit Warp(int n) : bar(n), size(n) {}
  Barrier bar;
  int size;
  alignas(16) unsigned char slots[2][32][16];
};

struct Block {
  explicit Block(int nthreads) : bar(nthreads), nthreads(nthreads) {
    for (int w = 0; w * 32 < nthreads; ++w)
      warps.emplace_back(new Warp(nthreads - 32 * w < 32 ? nthreads - 32 * w : 32));
  }
  // Ready for the next block (called while every thread waits between blocks).
  void reset() {
    bar.reset(nthreads);
    for (auto& w : warps) w->bar.reset(w->size);
  }
  Barrier bar;
  int nthreads;
  std::vector<std::unique_ptr<Warp>> warps;
};

struct ThreadState {
  Block* block = nullptr;
  Warp* warp = nullptr;
  int lane = 0;
  unsigned phase = 0;
};
inline thread_local ThreadState tls;

inline Warp& this_warp() {
  if (tls.warp == nullptr) fail("warp collective called outside a kernel launch");
  return *tls.warp;
}

// Write v to this lane's slot, wait for the warp, read lane src's slot.
template <typename T>
inline T exchange(const T& v, int src) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shuffle of an unsupported type");
  Warp& w = this_warp();
  ThreadState& t = tls;
  std::memcpy(w.slots[t.phase][t.lane], &v, sizeof(T));
  w.bar.arrive_and_wait();
  T r;
  std::memcpy(&r, w.slots[t.phase][src & 31], sizeof(T));
  t.phase ^= 1u;  // the next collective uses the other buffer: no second barrier needed
  return r;
}

// Every lane's 32-bit predicate, for ballot/any/all.
inline unsigned collect_bits(int pred) {
  Warp& w = this_warp();
  ThreadState& t = tls;
  const int p = pred ? 1 : 0;
  std::memcpy(w.slots[t.phase][t.lane], &p, sizeof(int));
  w.bar.arrive_and_wait();
  unsigned bits = 0;
  for (int l = 0; l < w.size; ++l) {
    int x;
    std::memcpy(&x, w.slots[t.phase][l], sizeof(int));
    if (x) bits |= 1u << l;
  }
  t.phase ^= 1u;
  return bits;
}

// ------------------------------------------------------------------ subnormals
// -ftz=true makes the GPU flush float32 subnormals to zero, as inputs and as results
// of float arithmetic and of double -> float conversions (float -> double too:
// cvt.ftz.f64.f32); double arithmetic keeps its subnormals. MXCSR's FTZ (bit 15) and
// DAZ (bit 6) flush every SSE operation, double ones too, so they are set only for
// kernels instantiated for float (any float or float* parameter) and cleared for
// double kernels, whose results then match the GPU's. The one difference left: the
// double sums of sg_attn_fwd_merge<float> flush here below 2.2e-308 and not on the
// GPU; such terms are added to a denominator >= 1 or rounded to float afterwards, so
// no float output can differ. Elsewhere than x86 the emulation keeps subnormals.
template <typename X>
struct is_float_param
    : std::is_same<typename std::remove_cv<typename std::remove_pointer<X>::type>::type, float> {};

template <typename... P>
constexpr bool takes_float() {
  return (false || ... || is_float_param<P>::value);
}

inline void set_subnormal_flushing(bool on) {
#if defined(__x86_64__) || defined(__i386__)
  const unsigned ftz_daz = 0x8040u;
  _mm_setcsr(on ? (_mm_getcsr() | ftz_daz) : (_mm_getcsr() & ~ftz_daz));
#else
  (void)on;
#endif
}

// ------------------------------------------------------------------ launching
// Runs the grid's blocks one after another (so __shared__ statics are per block) on
// one team of blockDim OS threads that is reused from block to block.
template <typename... P, typename... A>
void launch(dim3 grid, dim3 block, void (*kernel)(P...), A... args) {
  static_assert(sizeof...(P) == sizeof...(A), "wrong number of kernel arguments");
  const unsigned nthreads = block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024) fail("invalid block size");
  const unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
  if (nblocks == 0) return;
  Block blk((int)nthreads);
  Barrier between((int)nthreads);  // every thread finishes block b before block b + 1 starts
  auto worker = [&](unsigned t) {
    set_subnormal_flushing(takes_float<P...>());  // each thread: MXCSR is per thread
    threadIdx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
    blockDim = block;
    gridDim = grid;
    for (unsigned long long b = 0; b < nblocks; ++b) {
      blockIdx = uint3{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y),
                       (unsigned)(b / ((unsigned long long)grid.x * grid.y))};
      tls.block = &blk;
      tls.warp = blk.warps[t / 32].get();
      tls.lane = (int)(t % 32);
      tls.phase = 0;
      kernel(static_cast<P>(args)...);
      tls.warp->bar.drop();  // an exited thread no longer holds its warp or block back
      blk.bar.drop();
      between.arrive_and_wait([&] { blk.reset(); });
    }
    tls = ThreadState();
  };
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();
}

}  // namespace cuda_emu

// ------------------------------------------------------------------ warp collectives
template <typename T>
inline T __shfl_sync(unsigned /*mask*/, T var, int srcLane, int width = warpSize) {
  const int lane = cuda_emu::tls.lane;
  const int base = lane & ~(width - 1);
  return cuda_emu::exchange(var, base + (srcLane & (width - 1)));
}

template <typename T>
inline T __shfl_xor_sync(unsigned /*mask*/, T var, int laneMask, int width = warpSize) {
  const int lane = cuda_emu::tls.lane;
  int src = lane ^ laneMask;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
  return cuda_emu::exchange(var, src);
}

template <typename T>
inline T __shfl_down_sync(unsigned /*mask*/, T var, unsigned delta, int width = warpSize) {
  const int lane = cuda_emu::tls.lane;
  const int src = (lane & (width - 1)) + (int)delta >= width ? lane : lane + (int)delta;
  return cuda_emu::exchange(var, src);
}

template <typename T>
inline T __shfl_up_sync(unsigned /*mask*/, T var, unsigned delta, int width = warpSize) {
  const int lane = cuda_emu::tls.lane;
  const int src = (lane & (width - 1)) < (int)delta ? lane : lane - (int)delta;
  return cuda_emu::exchange(var, src);
}

inline unsigned __ballot_sync(unsigned mask, int pred) { return cuda_emu::collect_bits(pred) & mask; }
inline int __any_sync(unsigned mask, int pred) { return (cuda_emu::collect_bits(pred) & mask) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  return (cuda_emu::collect_bits(pred) & mask) == (mask & ((cuda_emu::this_warp().size == 32)
                                                               ? 0xffffffffu
                                                               : ((1u << cuda_emu::this_warp().size) - 1)));
}
inline void __syncwarp(unsigned /*mask*/ = 0xffffffffu) { cuda_emu::this_warp().bar.arrive_and_wait(); }
inline void __syncthreads() {
  if (cuda_emu::tls.block == nullptr) cuda_emu::fail("__syncthreads outside a kernel launch");
  cuda_emu::tls.block->bar.arrive_and_wait();
}
inline unsigned __activemask() { return 0xffffffffu; }

// ------------------------------------------------------------------ math and intrinsics
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <typename T> inline T __ldg(const T* p) { return *p; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; std::memcpy(&x, &i, 8); return x; }
using std::exp;
using std::log;
using std::sqrt;
using std::fmax;
using std::fmin;
using std::fabs;

#endif  // SPARSEGAT_CUDA_EMU_H
