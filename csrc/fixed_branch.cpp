// The `fixedbranch` operator library: schemas, the shared argument checks, the composite conv + branch op and the
// Python module stub. Kernels live in cpu/ and cuda/, one file per device.
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "fixed_branch.h"

#ifndef FIXEDBRANCH_ISA
#define FIXEDBRANCH_ISA "default"
#endif

namespace {

// setup.py builds the CPU kernels for this machine's widest vector ISA; refuse to load where it is missing.
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
// `import fixedbranch._C` runs the static initialisers below, which register the operators.
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

namespace fixedbranch {

PadMode parse_padding_mode(c10::string_view name) {
  if (name == "zeros") return PadMode::Zeros;
  if (name == "reflect") return PadMode::Reflect;
  if (name == "replicate") return PadMode::Replicate;
  if (name == "circular") return PadMode::Circular;
  TORCH_CHECK(false, "fixedbranch: padding_mode must be one of 'zeros', 'reflect', 'replicate', 'circular', got '",
              std::string(name), "'");
}

PadMode check_branch_args(const char* what, const char* input_name, const at::Tensor& input, const at::Tensor& bank,
                          c10::string_view padding_mode) {
  const PadMode mode = parse_padding_mode(padding_mode);
  TORCH_CHECK(input.dim() == 4, what, ": expected ", input_name, " to have 4 dimensions (N, C, H, W), got ",
              input.dim());
  TORCH_CHECK(bank.dim() == 3, what, ": expected bank to have 3 dimensions (K, S1, S2), got ", bank.dim());
  TORCH_CHECK(bank.size(0) >= 1 && bank.size(1) >= 1 && bank.size(2) >= 1, what,
              ": expected a non-empty bank (K, S1, S2 >= 1), got shape ", bank.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), what, ": expected ", input_name,
              " to be float64, float32, float16 or bfloat16, got ", input.scalar_type());
  TORCH_CHECK(at::isFloatingType(bank.scalar_type()), what, ": expected bank to be a floating-point tensor, got ",
              bank.scalar_type());
  TORCH_CHECK(input.device() == bank.device(), what, ": expected bank on the same device as ", input_name, " (",
              input.device(), "), got ", bank.device());
  const SamePad pad = same_pad(bank.size(1), bank.size(2));
  const int64_t h = input.size(2), w = input.size(3);
  if (mode == PadMode::Reflect) {
    TORCH_CHECK(std::max(pad.top, pad.bottom) < h && std::max(pad.left, pad.right) < w, what,
                ": reflect padding needs the image larger than the padding: filter ", bank.size(1), "x", bank.size(2),
                " pads (top, bottom, left, right) = (", pad.top, ", ", pad.bottom, ", ", pad.left, ", ", pad.right,
                ") but ", input_name, " is ", h, "x", w);
  }
  if (mode == PadMode::Circular) {
    TORCH_CHECK(std::max(pad.top, pad.bottom) <= h && std::max(pad.left, pad.right) <= w, what,
                ": circular padding cannot wrap around more than once: filter ", bank.size(1), "x", bank.size(2),
                " on a ", h, "x", w, " ", input_name);
  }
  return mode;
}

at::Tensor empty_branch_output(const at::Tensor& y, int64_t num_filters) {
  return at::empty({y.size(0), (num_filters + 1) * y.size(1), y.size(2), y.size(3)},
                   y.options().memory_format(y.suggest_memory_format()));
}

at::Tensor empty_branch_grad(const at::Tensor& grad_output, int64_t num_filters) {
  const at::Tensor& g = grad_output;
  return at::empty({g.size(0), g.size(1) / (num_filters + 1), g.size(2), g.size(3)},
                   g.options().memory_format(g.suggest_memory_format()));
}

void check_backward_args(const at::Tensor& grad_output, const at::Tensor& bank, c10::IntArrayRef stop_gradient) {
  const int64_t branches = bank.size(0) + 1;
  TORCH_CHECK(grad_output.size(1) % branches == 0, "fixedbranch._fixed_branch_backward: expected grad_output's ",
              grad_output.size(1), " channels to be a multiple of K+1 = ", branches);
  for (const int64_t k : stop_gradient) {
    TORCH_CHECK(k >= 0 && k < branches, "fixedbranch: stop_gradient index ", k, " out of range [0, ", branches - 1,
                "] for a bank of ", branches - 1, " filters");
  }
}

namespace {

// Conv (ATen's, so every backend and algorithm choice stays PyTorch's) followed by the fused branch kernel.
at::Tensor fixed_branch_conv2d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const at::Tensor& bank, c10::IntArrayRef stride, c10::IntArrayRef padding,
                               c10::IntArrayRef dilation, int64_t groups, c10::string_view padding_mode,
                               c10::IntArrayRef stop_gradient) {
  TORCH_CHECK(x.dim() == 4, "fixedbranch.fixed_branch_conv2d: expected x to have 4 dimensions (N, C, H, W), got ",
              x.dim());
  TORCH_CHECK(weight.dim() == 4,
              "fixedbranch.fixed_branch_conv2d: expected weight to have 4 dimensions (C_out, C_in/groups, kH, kW), "
              "got ",
              weight.dim());
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(),
              "fixedbranch.fixed_branch_conv2d: expected x and weight to have the same dtype, got ", x.scalar_type(),
              " and ", weight.scalar_type());
  const at::Tensor y = at::convolution(x, weight, bias, stride, padding, dilation, /*transposed=*/false,
                                       /*output_padding=*/{0, 0}, groups);
  static auto branch_op = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("fixedbranch::fixed_branch", "")
                              .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view,
                                                c10::IntArrayRef)>();
  return branch_op.call(y, bank, padding_mode, stop_gradient);
}

}  // namespace

TORCH_LIBRARY(fixedbranch, m) {
  // stop_gradient does not change the forward; it is an argument so that the registered autograd formula sees it.
  m.def("fixed_branch(Tensor y, Tensor bank, str padding_mode, int[] stop_gradient) -> Tensor");
  m.def(
      "_fixed_branch_backward(Tensor grad_output, Tensor bank, str padding_mode, int[] stop_gradient) -> Tensor");
  m.def(
      "fixed_branch_conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor bank, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, str padding_mode, int[] stop_gradient) -> Tensor");
}

TORCH_LIBRARY_IMPL(fixedbranch, CompositeExplicitAutograd, m) {
  m.impl("fixed_branch_conv2d", &fixed_branch_conv2d);
}

}  // namespace fixedbranch
