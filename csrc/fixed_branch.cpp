// The `fixedbranch` operator library: every schema, the device-independent entry points (checks, parsing,
// allocation, device guard, then the device kernel) and the composite convolution + branch operator, and the
// registration of every implementation. Kernels live in cpu/ and cuda/, one file per device; the bank plan's and the
// CPU cost model's diagnostics in bank_plan/ and cpu/cost_model.h.
//
// One mechanism registers the device kernels, in the manner of ATen's DispatchStub: a device file only provides its
// kernels (register_branch_kernels, one static initialiser) and this file registers the one entry point of each
// operator with the dispatcher for both device keys. Everything a raw operator call must check happens in that entry
// point whatever the device, so the devices cannot drift apart in what they accept, and a build without the CUDA
// kernels still answers a CUDA tensor with the operator's own message.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <vector>

#include "bank_plan/bank_plan.h"
#include "checks.h"
#include "cpu/cost_model.h"
#include "cpu/depthwise.h"
#include "fixed_branch.h"

namespace fixedbranch {
namespace {

constexpr int kDevices = 2;  // CPU and CUDA

int device_index(c10::DeviceType device) {
  switch (device) {
    case c10::DeviceType::CPU:
      return 0;
    case c10::DeviceType::CUDA:
      return 1;
    default:
      return -1;
  }
}

std::array<BranchKernels, kDevices>& kernel_table() {
  static std::array<BranchKernels, kDevices> table;
  return table;
}

const BranchKernels& kernels_for(const char* what, const at::Tensor& t) {
  const int i = device_index(t.device().type());
  TORCH_CHECK(i >= 0 && kernel_table()[i].forward != nullptr, what, ": this build of fixedbranch has no kernels for ",
              t.device().type(), " tensors (the CUDA kernels are built when setup.py finds a CUDA toolkit and a CUDA "
              "torch, or with FORCE_CUDA=1)");
  return kernel_table()[i];
}

std::array<int64_t, 4> sizes_of(const at::Tensor& t) { return {t.size(0), t.size(1), t.size(2), t.size(3)}; }

}  // namespace

bool register_branch_kernels(c10::DeviceType device, BranchKernels kernels) {
  kernel_table()[device_index(device)] = kernels;
  return true;
}

namespace {

CudaHooks& cuda_hooks() {
  static CudaHooks hooks;
  return hooks;
}

// fixedbranch::_cuda_kernels: the CUDA kernel generation the next call runs, or "none" in a build without CUDA.
std::string cuda_kernels() { return cuda_hooks().kernels != nullptr ? cuda_hooks().kernels() : "none"; }

// fixedbranch::_cuda_error_probe: raises the CUDA-side error `what` names (CudaHooks).
void cuda_error_probe(c10::string_view what) {
  TORCH_CHECK(cuda_hooks().error_probe != nullptr,
              "fixedbranch._cuda_error_probe: this build of fixedbranch has no CUDA kernels");
  cuda_hooks().error_probe(what);
}

}  // namespace

bool register_cuda_hooks(CudaHooks hooks) {
  cuda_hooks() = hooks;
  return true;
}

namespace {

// fixedbranch::_kernel_devices: the device types this build has kernels for ("cpu", and "cuda" when built with them).
std::vector<std::string> kernel_devices() {
  std::vector<std::string> devices;
  for (const auto device : {c10::DeviceType::CPU, c10::DeviceType::CUDA}) {
    if (kernel_table()[device_index(device)].forward != nullptr) devices.push_back(c10::DeviceTypeName(device, true));
  }
  return devices;
}

}  // namespace

at::Tensor fixed_branch(const at::Tensor& y, const at::Tensor& bank, c10::string_view padding_mode,
                        c10::IntArrayRef stop_gradient, bool identity, c10::string_view order,
                        c10::IntArrayRef stride) {
  constexpr const char* what = "fixedbranch.fixed_branch";
  check_float_tensor(what, "y", y, 4, "(N, C, H, W)");
  check_bank(what, bank, y, "y");
  const BranchArgs args =
      parse_branch_args(what, "y", sizes_of(y), bank, padding_mode, stop_gradient, identity, order, stride);
  const BranchKernels& kernels = kernels_for(what, y);
  at::Tensor out = at::empty({args.N, args.B * args.C, args.out_h, args.out_w},
                             y.options().memory_format(y.suggest_memory_format()));
  if (out.numel() == 0) return out;
  const c10::OptionalDeviceGuard device_guard(y.device());
  // The bank is rounded to y's dtype here, once, so every caller computes with the same filter values.
  const at::Tensor bank_y = bank.to(y.scalar_type()).contiguous();
  kernels.forward(y, bank_y, args, out);
  return out;
}

namespace {

// The backward's checks, told in the name of `what`: the operator's, or branch_contributions' (_check_backward_args).
BranchArgs check_backward_args(const char* what, const at::Tensor& g, const at::Tensor& bank,
                               c10::string_view padding_mode, c10::IntArrayRef stop_gradient, bool identity,
                               c10::string_view order, c10::IntArrayRef stride, c10::IntArrayRef input_size) {
  check_float_tensor(what, "grad_output", g, 4, "(N, B*C, H', W')");
  check_bank(what, bank, g, "grad_output");
  const int64_t branches = bank.size(0) + (identity ? 1 : 0);
  TORCH_CHECK_VALUE(g.size(1) % branches == 0, what, ": expected grad_output's ", g.size(1),
                    " channels to be a multiple of the ", branches, " branches of the output");
  TORCH_CHECK_VALUE(input_size.size() == 2 && input_size[0] >= 0 && input_size[1] >= 0, what,
                    ": expected input_size to be y's (H, W), got ", input_size);
  const BranchArgs args = parse_branch_args(what, "the input", {g.size(0), g.size(1) / branches, input_size[0],
                                                                input_size[1]},
                                            bank, padding_mode, stop_gradient, identity, order, stride);
  TORCH_CHECK_VALUE(g.size(2) == args.out_h && g.size(3) == args.out_w, what, ": grad_output is ", g.size(2), "x",
                    g.size(3), " but input_size (", args.H, ", ", args.W, ") with stride ",
                    echo_pair({args.stride_h, args.stride_w}), " gives ", args.out_h, "x", args.out_w);
  return args;
}

}  // namespace

at::Tensor fixed_branch_backward(const at::Tensor& grad_output, const at::Tensor& bank, c10::string_view padding_mode,
                                 c10::IntArrayRef stop_gradient, bool identity, c10::string_view order,
                                 c10::IntArrayRef stride, c10::IntArrayRef input_size) {
  constexpr const char* what = "fixedbranch._fixed_branch_backward";
  const at::Tensor& g = grad_output;
  const BranchArgs args =
      check_backward_args(what, g, bank, padding_mode, stop_gradient, identity, order, stride, input_size);
  const BranchKernels& kernels = kernels_for(what, g);
  at::Tensor grad_y = at::empty({args.N, args.C, args.H, args.W}, g.options().memory_format(g.suggest_memory_format()));
  if (grad_y.numel() == 0) return grad_y;
  const c10::OptionalDeviceGuard device_guard(g.device());
  const at::Tensor bank_g = bank.to(g.scalar_type()).contiguous();
  kernels.backward(g, bank_g, args, grad_y);
  return grad_y;
}

// The adjoint of fixed_branch is its backward with no branch stopped: the same device kernel computes both, so the
// transpose has exactly the backward's arithmetic (and its determinism) on every device.
at::Tensor fixed_branch_transpose(const at::Tensor& z, const at::Tensor& bank, c10::string_view padding_mode,
                                  bool identity, c10::string_view order, c10::IntArrayRef stride,
                                  c10::OptionalIntArrayRef output_size) {
  constexpr const char* what = "fixedbranch.fixed_branch_transpose";
  check_float_tensor(what, "z", z, 4, "(N, B*C, H', W')");
  check_bank(what, bank, z, "z");
  const int64_t branches = bank.size(0) + (identity ? 1 : 0);
  TORCH_CHECK_VALUE(z.size(1) % branches == 0, what, ": expected z's ", z.size(1),
                    " channels to be a multiple of the ", branches, " branches (", bank.size(0), " filters",
                    identity ? " and the identity" : "", ")");
  const int64_t N = z.size(0), C = z.size(1) / branches;
  // The options first (an image size of -1 skips the size rules), so that a bad stride is reported as such.
  const bool strided = parse_branch_args(what, "image (output_size)", {N, C, -1, -1}, bank, padding_mode,
                                         /*stop_gradient=*/{}, identity, order, stride)
                           .strided();
  TORCH_CHECK_VALUE(output_size.has_value() || !strided, what, ": output_size (the (H, W) of fixed_branch's input) ",
                    "is required with stride ", echo_pair(stride), ": z's size does not determine it");
  if (output_size.has_value()) {
    const c10::IntArrayRef s = *output_size;
    TORCH_CHECK_VALUE(s.size() == 2, what, ": expected output_size to be a pair (H, W), got ", s.size(), " values");
    TORCH_CHECK_VALUE(s[0] >= 0 && s[1] >= 0, what,
                      ": expected output_size to be a pair (H, W) of non-negative ints, got (", s[0], ", ", s[1], ")");
  }
  const int64_t H = output_size.has_value() ? (*output_size)[0] : z.size(2);
  const int64_t W = output_size.has_value() ? (*output_size)[1] : z.size(3);
  const BranchArgs args = parse_branch_args(what, "image (output_size)", {N, C, H, W}, bank, padding_mode,
                                            /*stop_gradient=*/{}, identity, order, stride);
  TORCH_CHECK_VALUE(z.size(2) == args.out_h && z.size(3) == args.out_w, what, ": z is ", z.size(2), "x", z.size(3),
                    " but output_size (", args.H, ", ", args.W, ") with stride ",
                    echo_pair({args.stride_h, args.stride_w}), " gives ", args.out_h, "x", args.out_w);
  const BranchKernels& kernels = kernels_for(what, z);
  at::Tensor y = at::empty({args.N, args.C, args.H, args.W}, z.options().memory_format(z.suggest_memory_format()));
  if (y.numel() == 0) return y;
  const c10::OptionalDeviceGuard device_guard(z.device());
  const at::Tensor bank_z = bank.to(z.scalar_type()).contiguous();
  kernels.backward(z, bank_z, args, y);
  return y;
}

namespace {

// Conv (ATen's, so every backend and algorithm choice stays PyTorch's) followed by the fused branch operator. The
// branch arguments are checked against the convolution's output size before the convolution runs.
at::Tensor fixed_branch_conv2d(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                               const at::Tensor& bank, c10::IntArrayRef stride, c10::IntArrayRef padding,
                               c10::IntArrayRef dilation, int64_t groups, c10::string_view padding_mode,
                               c10::IntArrayRef stop_gradient, bool identity, c10::string_view order,
                               c10::IntArrayRef filter_stride) {
  constexpr const char* what = "fixedbranch.fixed_branch_conv2d";
  const auto y_sizes = check_conv_args(what, x, weight, bias, stride, padding, dilation, groups);
  check_bank(what, bank, x, "x");
  parse_branch_args(what, "the convolution's output", y_sizes, bank, padding_mode, stop_gradient, identity, order,
                    filter_stride, "filter_stride");
  const at::Tensor y = at::convolution(x, weight, bias, stride, padding, dilation, /*transposed=*/false,
                                       /*output_padding=*/{0, 0}, groups);
  static auto branch_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fixedbranch::fixed_branch", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, c10::IntArrayRef, bool,
                            c10::string_view, c10::IntArrayRef)>();
  return branch_op.call(y, bank, padding_mode, stop_gradient, identity, order, filter_stride);
}

// The options alone, for a module to check at construction: the operator's own checks, before any image, told in
// the caller's names (the module's, and its argument names: filter_padding_mode, filter_stride).
void check_options(const at::Tensor& bank, c10::string_view padding_mode, c10::IntArrayRef stop_gradient,
                   bool identity, c10::string_view order, c10::IntArrayRef stride, c10::string_view caller,
                   c10::string_view padding_mode_name, c10::string_view stride_name) {
  const std::string what(caller), mode_name(padding_mode_name), stride_arg(stride_name);
  check_bank(what.c_str(), bank, bank, "itself");  // (no operand yet: the device rule holds trivially)
  parse_branch_args(what.c_str(), "y", {0, 0, -1, -1}, bank, padding_mode, stop_gradient, identity, order, stride,
                    stride_arg.c_str(), mode_name.c_str());
}

// The backward's checks alone, told in the caller's name: branch_contributions runs the backward once per branch.
void check_backward_options(const at::Tensor& grad_output, const at::Tensor& bank, c10::string_view padding_mode,
                            bool identity, c10::string_view order, c10::IntArrayRef stride,
                            c10::IntArrayRef input_size, c10::string_view caller) {
  const std::string what(caller);
  check_backward_args(what.c_str(), grad_output, bank, padding_mode, {}, identity, order, stride, input_size);
}

}  // namespace

TORCH_LIBRARY(fixedbranch, m) {
  // The operators.
  // stop_gradient does not change the forward; it is an argument so that the registered autograd formula sees it.
  m.def(
      "fixed_branch(Tensor y, Tensor bank, str padding_mode=\"zeros\", int[] stop_gradient=[], bool identity=True, "
      "str order=\"branch\", int[2] stride=1) -> Tensor");
  // input_size is y's (H, W): with a stride, grad_output's size does not determine it.
  m.def(
      "_fixed_branch_backward(Tensor grad_output, Tensor bank, str padding_mode, int[] stop_gradient, bool identity, "
      "str order, int[2] stride, SymInt[2] input_size) -> Tensor");
  // The adjoint of fixed_branch (same bank and options): z in fixed_branch's output layout -> (N, C, H, W). output_size
  // is that (H, W), which a stride keeps z's size from determining.
  m.def(
      "fixed_branch_transpose(Tensor z, Tensor bank, str padding_mode=\"zeros\", bool identity=True, "
      "str order=\"branch\", int[2] stride=1, SymInt[2]? output_size=None) -> Tensor");
  m.def(
      "fixed_branch_conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor bank, int[2] stride=1, int[2] padding=0, "
      "int[2] dilation=1, int groups=1, str padding_mode=\"zeros\", int[] stop_gradient=[], bool identity=True, "
      "str order=\"branch\", int[2] filter_stride=1) -> Tensor");
  // dL/dweight of a depthwise convolution (groups = channels, stride 1, dilation 1, zero padding) on the CPU, which
  // the published blocks' trainable depthwise convolutions use (cpu/depthwise.cpp).
  m.def("_depthwise_conv2d_weight_grad(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] padding) -> Tensor");
  // The checks alone, told in the caller's names: a module's options at construction (no image yet), and
  // branch_contributions' arguments before it runs the backward once per branch.
  m.def(
      "_check_options(Tensor bank, str padding_mode, int[] stop_gradient, bool identity, str order, int[2] stride, "
      "str caller=\"fixedbranch.fixed_branch\", str padding_mode_name=\"padding_mode\", "
      "str stride_name=\"stride\") -> ()");
  m.def(
      "_check_backward_options(Tensor grad_output, Tensor bank, str padding_mode, bool identity, str order, "
      "int[2] stride, int[2] input_size, str caller) -> ()");

  // Diagnostics, off the hot path (bank_plan/bank_plan.h, cpu/cost_model.h). Those without a tensor argument have
  // one implementation for every dispatch key.
  m.def("_bank_plan(Tensor bank) -> Tensor");
  m.def("_bank_plan_reconstruct(Tensor bank) -> Tensor");
  m.def("_bank_plan_pays_on_cpu(Tensor bank, bool backward=False) -> bool");
  m.def("_bank_plan_columns() -> str[]", &bank_plan_columns);
  m.def("_bank_plan_tolerances(ScalarType dtype) -> float[]", &bank_plan_tolerances);
  m.def("_set_factoring(str policy) -> str", &set_factoring);
  m.def("_kernel_devices() -> str[]", &kernel_devices);
  m.def("_cuda_kernels() -> str", &cuda_kernels);
  m.def("_cuda_error_probe(str what) -> ()", &cuda_error_probe);
}

// The device-independent entry points, once for each device key; the kernels come from the table above.
TORCH_LIBRARY_IMPL(fixedbranch, CPU, m) {
  m.impl("fixed_branch", &fixed_branch);
  m.impl("_fixed_branch_backward", &fixed_branch_backward);
  m.impl("fixed_branch_transpose", &fixed_branch_transpose);
  m.impl("_depthwise_conv2d_weight_grad", &depthwise_conv2d_weight_grad);
}

TORCH_LIBRARY_IMPL(fixedbranch, CUDA, m) {
  m.impl("fixed_branch", &fixed_branch);
  m.impl("_fixed_branch_backward", &fixed_branch_backward);
  m.impl("fixed_branch_transpose", &fixed_branch_transpose);
}

TORCH_LIBRARY_IMPL(fixedbranch, CompositeImplicitAutograd, m) {
  m.impl("_check_options", &check_options);
  m.impl("_check_backward_options", &check_backward_options);
}

TORCH_LIBRARY_IMPL(fixedbranch, CompositeExplicitAutograd, m) {
  m.impl("fixed_branch_conv2d", &fixed_branch_conv2d);
  m.impl("_bank_plan", &bank_plan_table);
  m.impl("_bank_plan_reconstruct", &bank_plan_reconstruct);
  m.impl("_bank_plan_pays_on_cpu", &bank_plan_pays_on_cpu);
}

}  // namespace fixedbranch
