// Launching emulated kernels by name from Python (ctypes), with cuLaunchKernel's
// calling convention: args[i] points to the value of parameter i. Each argument
// comes with a type code ("i4", "i8", "u8", "f4", "f8"; "*f4" etc. for arrays,
// "*0" for a null pointer), checked against the kernel's C parameter types, so the
// tests catch a launch that passes, say, an int64 where the kernel takes an int.
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

inline bool code_matches(const std::string& expected, const char* given) {
  if (expected == given) return true;
  return expected[0] == '*' && std::strcmp(given, "*0") == 0;  // null pointer
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
    if (!code_matches(expected[i], codes[i])) {
      std::snprintf(err, errlen, "argument %d: kernel parameter is %s, got %s", i, expected[i].c_str(), codes[i]);
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
