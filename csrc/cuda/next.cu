// The next CUDA kernels' entry points and the switch between kernel generations.
//
// FIXEDBRANCH_CUDA_KERNELS=verified (default): the kernels that have run on a GPU (fixed_branch_cuda.cu).
// FIXEDBRANCH_CUDA_KERNELS=next: the kernels of next_*.cu, which run only when asked for until a GPU has verified
// them (docs/design.md: CUDA arithmetic that no GPU has run never runs by default). The variable is read on every
// call (a getenv, far below a launch's cost), so tests switch generations within one process.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/cost_model.h"
#include "next_host.h"
#include "next_plan.h"

namespace fixedbranch {
namespace cuda {
namespace next {

Generation selected_generation() {
  const char* value = std::getenv("FIXEDBRANCH_CUDA_KERNELS");
  if (value == nullptr || *value == '\0' || std::strcmp(value, "verified") == 0) return Generation::Verified;
  if (std::strcmp(value, "next") == 0) return Generation::Next;
  TORCH_CHECK_VALUE(false, "fixedbranch: the environment variable FIXEDBRANCH_CUDA_KERNELS must be 'verified' or "
                    "'next', got '", value, "'");
  return Generation::Verified;
}

void forward(const at::Tensor& y, const at::Tensor& bank, const BranchArgs& a, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(y.device());
  const c10::ScalarType opmath = at::toOpMathType(y.scalar_type());
  // Looked up before `w` takes another handle on the bank: the cache tells a caller's bank from the operator's
  // per-call conversion by its handles (next_plan.cu).
  // Banks under 5x5 are memory-bound on a GPU whatever their plan: they run direct without looking it up (and
  // without the first call's read of the bank), unless the policy forces factoring.
  const int64_t S1 = bank.size(1), S2 = bank.size(2);
  const bool may_factor = factoring_policy() == Factoring::Always ? S1 > 1 && S2 > 1 : S1 * S2 >= 25;
  const std::shared_ptr<const DevicePlan> plan = may_factor ? plan_for_bank(bank, opmath) : nullptr;
  const at::Tensor w = bank.to(opmath).contiguous();
  if (forward_factored(y, plan.get(), w, a, out)) return;
  forward_direct(y, w, a, out);
}

void backward(const at::Tensor& grad_output, const at::Tensor& bank, const BranchArgs& a, at::Tensor& grad_y) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor w = bank.to(at::toOpMathType(grad_output.scalar_type())).contiguous();
  StopMask stop{};
  std::vector<int32_t> overflow;
  for (int64_t k = 0; k <= a.K; ++k) {
    if (!a.stopped[k]) continue;
    if (k < StopMask::kInline) {
      stop.bits[k >> 5] |= 1u << (k & 31);
    } else {
      const int64_t e = k - StopMask::kInline;
      overflow.resize(std::max<size_t>(overflow.size(), e / 32 + 1), 0);
      overflow[e >> 5] |= static_cast<int32_t>(1u << (e & 31));
    }
  }
  at::Tensor overflow_device;
  if (a.K + 1 > StopMask::kInline) {
    // Every branch past the inline mask needs a bit, stopped or not: a pinned copy, stream-ordered, no sync.
    overflow.resize((a.K + 1 - StopMask::kInline + 31) / 32, 0);
    at::Tensor host = at::empty({static_cast<int64_t>(overflow.size())},
                                at::TensorOptions().dtype(at::kInt).pinned_memory(true));
    std::copy(overflow.begin(), overflow.end(), host.mutable_data_ptr<int32_t>());
    overflow_device = host.to(grad_output.device(), /*non_blocking=*/true);
    stop.overflow = reinterpret_cast<const uint32_t*>(overflow_device.const_data_ptr<int32_t>());
  }
  backward_direct(grad_output, w, a, stop, grad_y);
}

namespace {

// fixedbranch::_cuda_kernels (CudaHooks): the generation the next call will run, "verified" or "next".
std::string cuda_kernels() { return selected_generation() == Generation::Next ? "next" : "verified"; }

__global__ void probe_kernel(int* out) {
  if (out != nullptr) *out = 1;
}

// fixedbranch::_cuda_error_probe (CudaHooks): raises the error of each kind that CUDA-side code can raise, from a
// translation unit nvcc compiled, so that a build whose exceptions cannot cross into Python (the failure where
// every TORCH_CHECK became a segfault) shows in tools/gpu_check instead of in a user's program.
//   "value":  TORCH_CHECK_VALUE (ValueError);  "check": TORCH_CHECK (RuntimeError);
//   "launch": a launch with no threads, caught by C10_CUDA_KERNEL_LAUNCH_CHECK (RuntimeError, "CUDA error");
//   "api":    a failing runtime call through C10_CUDA_CHECK (RuntimeError, "CUDA error").
void cuda_error_probe(c10::string_view what) {
  if (what == "value") {
    TORCH_CHECK_VALUE(false, "fixedbranch._cuda_error_probe: a value error raised in CUDA host code");
  } else if (what == "check") {
    TORCH_CHECK(false, "fixedbranch._cuda_error_probe: a runtime error raised in CUDA host code");
  } else if (what == "launch") {
    probe_kernel<<<1, 0, 0, at::cuda::getCurrentCUDAStream()>>>(nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    TORCH_CHECK(false, "fixedbranch._cuda_error_probe: the empty launch did not fail");
  } else if (what == "api") {
    C10_CUDA_CHECK(cudaSetDevice(-1));
    TORCH_CHECK(false, "fixedbranch._cuda_error_probe: cudaSetDevice(-1) did not fail");
  } else {
    TORCH_CHECK_VALUE(false, "fixedbranch._cuda_error_probe: what must be 'value', 'check', 'launch' or 'api', got '",
                      std::string(what), "'");
  }
}

const bool registered = register_cuda_hooks({&cuda_kernels, &cuda_error_probe});

}  // namespace

}  // namespace next
}  // namespace cuda
}  // namespace fixedbranch
