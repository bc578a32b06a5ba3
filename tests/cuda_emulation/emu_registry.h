// Launching emulated kernels by name from Python (ctypes), with cuLaunchKernel's
// calling convention: args[i] points to the value of parameter i. Each argument
// comes with a type code ("i4", "i8", "u8", "f4", "f8"; "*f4" etc. for arrays),
// checked against the kernel's C parameter types, so the tests catch a launch that
// passes, say, an int64 where the kernel takes an int. A null pointer is passed as
// CuPy passes it on every version: a "u8" zero (launch.NULL, 8 zero bytes, which the
// kernel reads as nullptr); a nonzero "u8" for a pointer is refused (an address from
// nowhere). The harness refuses None before it gets here (CuPy < 14 passes None as a
// non-null pointer).
//
// A generated translation unit includes the .cu sources and this header, then
// defines the table with SG_EMU_ENTRY("name<...>") for each name expression.

#ifndef SPARSEGAT_EMU_REGISTRY_H
#define SPARSEGAT_EMU_REGISTRY_H

#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

namespace cuda_emu {

template <typename X> struct ArgCode;
template <> struct ArgCode<int> { static std::string get() { return "i4"; } };
template <> struct ArgCode<long long> { static std::string get() { return "i8"; } };
template <> struct ArgCode<unsigned long long> { static std::string get() { return "u8"; } };
template <> struct ArgCode<float> { static std::string get() { return "f4"; } };
template <> struct ArgCode<double> { static std::string get() { return "f8"; } };
template <typename X> struct ArgCode<X*> {
  static std::string get() { return "*" + ArgCode<typename std::remove_cv<X>::type>::get(); }
};

template <typename P> std::string arg_code() {
  return ArgCode<typename std::remove_cv<typename std::remove_reference<P>::type>::type>::get();
}

static_assert(sizeof(void*) == sizeof(unsigned long long), "a u8 zero must read as a null pointer");

// Empty when the argument fits the parameter, else why not.
inline std::string arg_mismatch(const std::string& expected, const char* given, const void* value) {
  if (expected == given) return std::string();
  if (expected[0] == '*' && std::strcmp(given, "u8") == 0) {
    if (*static_cast<const unsigned long long*>(value) == 0) return std::string();  // launch.NULL
    return "kernel parameter is " + expected + ", got a nonzero u8 (pass an array or launch.NULL)";
  }
  return "kernel parameter is " + expected + ", got " + given;
}

using LaunchFn = int (*)(const unsigned*, const unsigned*, int, void**, const char**, char*, int);

template <typename... P, std::size_t... Is>
void call_unpacked(void (*kernel)(P...), dim3 g, dim3 b, void** args, std::index_sequence<Is...>) {
  launch(g, b, kernel,
         *static_cast<typename std::remove_cv<typename std::remove_reference<P>::type>::type*>(args[Is])...);
}

template <typename... P>
int launch_packed(void (*kernel)(P...), const unsigned* grid, const unsigned* block, int nargs,
                  void** args, const char** codes, char* err, int errlen) {
  if (nargs != (int)sizeof...(P)) {
    std::snprintf(err, errlen, "kernel takes %d arguments, got %d", (int)sizeof...(P), nargs);
    return 1;
  }
  const std::string expected[] = {arg_code<P>()..., std::string()};
  for (int i = 0; i < nargs; ++i) {
    const std::string why = arg_mismatch(expected[i], codes[i], args[i]);
    if (!why.empty()) {
      std::snprintf(err, errlen, "argument %d: %s", i, why.c_str());
      return 2;
    }
  }
  call_unpacked(kernel, dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), args,
                std::index_sequence_for<P...>{});
  return 0;
}

struct Entry {
  const char* name;
  LaunchFn fn;
};

}  // namespace cuda_emu

// SG_EMU_ENTRY("name<...>", name<...>): a table row launching that instantiation.
#define SG_EMU_ENTRY(NAME, ...)                                                                     \
  cuda_emu::Entry {                                                                                \
    NAME, [](const unsigned* g, const unsigned* b, int n, void** a, const char** c, char* e, int el) { \
      return cuda_emu::launch_packed(&__VA_ARGS__, g, b, n, a, c, e, el);                          \
    }                                                                                              \
  }

#endif  // SPARSEGAT_EMU_REGISTRY_H
