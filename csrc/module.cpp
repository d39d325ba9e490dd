// The Python module `fixedbranch._C`: importing it runs the static initialisers that register the operators
// (fixed_branch.cpp and the device files). It refuses to load on a CPU without the vector ISA it was built for, and
// under a torch of another minor version than the one it was compiled against.
#include <Python.h>
#include <torch/version.h>

#include <cstdio>
#include <string>

#include "cpu/cache.h"

#ifndef FIXEDBRANCH_ISA
#define FIXEDBRANCH_ISA "default"
#endif

namespace {

// setup.py builds the CPU kernels for this machine's widest vector ISA (at::vec picks its width at compile time).
bool cpu_has_build_isa() {
#if defined(__x86_64__) || defined(__i386__)
  const std::string isa = FIXEDBRANCH_ISA;
  if (isa == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return true;
}

#define FIXEDBRANCH_STR2(x) #x
#define FIXEDBRANCH_STR(x) FIXEDBRANCH_STR2(x)
constexpr const char* kBuiltTorch = FIXEDBRANCH_STR(TORCH_VERSION_MAJOR) "." FIXEDBRANCH_STR(TORCH_VERSION_MINOR);

// torch's C++ ABI (c10::Error's layout among it) changes between minor versions. An extension built against one
// torch and loaded under another (a build carried to a machine with a different torch) links, then corrupts memory
// the first time an exception crosses it: every TORCH_CHECK becomes a crash. Refuse to load instead. Returns the
// loaded torch's version, or an empty string when it matches (or cannot be read).
std::string torch_mismatch() {
  PyObject* torch = PyImport_ImportModule("torch");
  if (torch == nullptr) {
    PyErr_Clear();
    return "";
  }
  std::string loaded;
  PyObject* version = PyObject_GetAttrString(torch, "__version__");
  if (version != nullptr) {
    PyObject* text = PyObject_Str(version);
    if (text != nullptr) {
      const char* utf8 = PyUnicode_AsUTF8(text);
      if (utf8 != nullptr) loaded = utf8;
      Py_DECREF(text);
    }
    Py_DECREF(version);
  }
  Py_DECREF(torch);
  PyErr_Clear();
  int major = -1, minor = -1;
  if (std::sscanf(loaded.c_str(), "%d.%d", &major, &minor) != 2) return "";
  return major == TORCH_VERSION_MAJOR && minor == TORCH_VERSION_MINOR ? "" : loaded;
}

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  const std::string loaded_torch = torch_mismatch();
  if (!loaded_torch.empty()) {
    const std::string msg = "fixedbranch._C was built against torch " + std::string(kBuiltTorch) +
                            " but torch " + loaded_torch +
                            " is loaded; rebuild the extension with this torch (pip install --no-build-isolation -e .)";
    PyErr_SetString(PyExc_ImportError, msg.c_str());
    return nullptr;
  }
  if (!cpu_has_build_isa()) {
    PyErr_SetString(PyExc_ImportError,
                    "fixedbranch._C was built for the " FIXEDBRANCH_ISA
                    " vector ISA, which this CPU lacks; rebuild here (pip install --no-build-isolation -e .) or "
                    "with FIXEDBRANCH_CPU_ISA=default for a portable build");
    return nullptr;
  }
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr) PyModule_AddStringConstant(module, "cpu_isa", FIXEDBRANCH_ISA);
  if (module != nullptr) PyModule_AddStringConstant(module, "torch_version", kBuiltTorch);
  // The cache sizes the CPU kernels plan for (cpu/cache.h), for `python -m fixedbranch`.
  if (module != nullptr) {
    PyModule_AddIntConstant(module, "cpu_cache_bytes", fixedbranch::cpu::last_level_cache_bytes());
    PyModule_AddIntConstant(module, "cpu_owned_cache_bytes", fixedbranch::cpu::owned_cache_bytes());
  }
#ifdef FIXEDBRANCH_CUDA_ARCHS
  if (module != nullptr) PyModule_AddStringConstant(module, "cuda_arch_list", FIXEDBRANCH_CUDA_ARCHS);
#endif
  return module;
}
}
