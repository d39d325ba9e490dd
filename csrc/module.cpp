// The Python module `fixedbranch._C`: importing it runs the static initialisers that register the operators
// (fixed_branch.cpp and the device files). It refuses to load on a CPU without the vector ISA it was built for.
#include <Python.h>

#include <string>

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

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
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
#ifdef FIXEDBRANCH_CUDA_ARCHS
  if (module != nullptr) PyModule_AddStringConstant(module, "cuda_arch_list", FIXEDBRANCH_CUDA_ARCHS);
#endif
  return module;
}
}
