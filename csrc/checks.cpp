#include "checks.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <string>

namespace fixedbranch {
namespace {

PadMode parse_padding_mode(const char* what, const char* arg, c10::string_view name) {
  if (name == "zeros") return PadMode::Zeros;
  if (name == "reflect") return PadMode::Reflect;
  if (name == "replicate") return PadMode::Replicate;
  if (name == "circular") return PadMode::Circular;
  TORCH_CHECK_VALUE(false, what, ": expected ", arg, " to be one of 'zeros', 'reflect', 'replicate', 'circular', got '",
                    std::string(name), "'");
}

Order parse_order(const char* what, c10::string_view name) {
  if (name == "branch") return Order::Branch;
  if (name == "channel") return Order::Channel;
  TORCH_CHECK_VALUE(false, what,
                    ": expected order to be 'branch' (out[:, b*C + c]) or 'channel' (out[:, c*B + b]), got '",
                    std::string(name), "'");
}

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

std::string echo_pair(c10::IntArrayRef v) {
  if (v.size() == 2 && v[0] == v[1]) return std::to_string(v[0]);
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + (v.size() == 1 ? ",)" : ")");
}

namespace {

// An int[2] argument: two positive values (the schema already turned a single int into a pair).
std::array<int64_t, 2> positive_pair(const char* what, const char* name, c10::IntArrayRef v) {
  TORCH_CHECK_VALUE(v.size() == 2, what, ": expected ", name, " to be an int or a pair of ints, got ", echo_pair(v));
  TORCH_CHECK_VALUE(v[0] >= 1 && v[1] >= 1, what, ": expected ", name, " >= 1, got ", echo_pair(v));
  return {v[0], v[1]};
}

}  // namespace

void check_float_tensor(const char* what, const char* name, const at::Tensor& t, int64_t dim, const char* dims) {
  TORCH_CHECK_VALUE(t.defined(), what, ": expected ", name, " to be a tensor, got None");
  TORCH_CHECK_VALUE(t.dim() == dim, what, ": expected ", name, " to have ", dim, " dimensions ", dims, ", got ",
                    t.dim());
  TORCH_CHECK_VALUE(is_supported_dtype(t.scalar_type()), what, ": expected ", name,
                    " to be float64, float32, float16 or bfloat16, got ", t.scalar_type());
}

void check_bank(const char* what, const at::Tensor& bank, const at::Tensor& like, const char* like_name) {
  // Every filter constructor returns one 2-D filter, so passing it as the bank is the natural slip.
  TORCH_CHECK_VALUE(!bank.defined() || bank.dim() != 2, what,
                    ": expected bank to have 3 dimensions (K, S1, S2), got 2 (a single filter); make a bank of it "
                    "with fixedbranch.filters.bank(f) or f[None]");
  check_float_tensor(what, "bank", bank, 3, "(K, S1, S2)");
  TORCH_CHECK_VALUE(bank.size(0) >= 1 && bank.size(1) >= 1 && bank.size(2) >= 1, what,
                    ": expected a non-empty bank (K, S1, S2 >= 1), got shape ", bank.sizes());
  TORCH_CHECK_VALUE(bank.device() == like.device(), what, ": expected bank on the same device as ", like_name, " (",
                    like.device(), "), got ", bank.device());
}

BranchArgs parse_branch_args(const char* what, const char* input_name, std::array<int64_t, 4> y_sizes,
                             const at::Tensor& bank, c10::string_view padding_mode, c10::IntArrayRef stop_gradient,
                             bool identity, c10::string_view order, c10::IntArrayRef stride,
                             const char* stride_name, const char* padding_mode_name) {
  BranchArgs a;
  a.mode = parse_padding_mode(what, padding_mode_name, padding_mode);
  a.order = parse_order(what, order);
  a.identity = identity;
  const auto s = positive_pair(what, stride_name, stride);
  a.stride_h = s[0];
  a.stride_w = s[1];
  a.N = y_sizes[0], a.C = y_sizes[1], a.H = y_sizes[2], a.W = y_sizes[3];
  a.out_h = a.H == 0 ? 0 : (a.H - 1) / a.stride_h + 1;
  a.out_w = a.W == 0 ? 0 : (a.W - 1) / a.stride_w + 1;
  a.K = bank.size(0);
  a.B = a.K + (identity ? 1 : 0);
  const int64_t s1 = bank.size(1), s2 = bank.size(2);
  a.pad = same_pad(s1, s2);
  const SamePad& p = a.pad;
  const bool known_size = a.H >= 0 && a.W >= 0;  // a module checks its options before it sees an image
  if (known_size && a.mode == PadMode::Reflect) {
    TORCH_CHECK_VALUE(std::max(p.top, p.bottom) < a.H && std::max(p.left, p.right) < a.W, what,
                      ": ", padding_mode_name, "='reflect' needs the image larger than the padding: a ", s1, "x", s2,
                      " filter pads (top, bottom, left, right) = (", p.top, ", ", p.bottom, ", ", p.left, ", ",
                      p.right, ") but ", input_name, " is ", a.H, "x", a.W);
  }
  if (known_size && a.mode == PadMode::Circular) {
    TORCH_CHECK_VALUE(std::max(p.top, p.bottom) <= a.H && std::max(p.left, p.right) <= a.W, what,
                      ": ", padding_mode_name, "='circular' cannot wrap around more than once: a ", s1, "x", s2,
                      " filter on a ", a.H, "x", a.W, " ", input_name);
  }
  a.stopped.assign(a.K + 1, false);
  for (const int64_t k : stop_gradient) {
    TORCH_CHECK_VALUE(k >= 0 && k <= a.K, what, ": stop_gradient index ", k, " out of range [0, ", a.K,
                      "] (0 is the identity branch, 1..", a.K, " the filters of the bank)");
    TORCH_CHECK_VALUE(k != 0 || identity, what,
                      ": stop_gradient names branch 0, the identity, but identity=False leaves it out of the output");
    a.stopped[k] = true;
  }
  return a;
}

std::array<int64_t, 4> check_conv_args(const char* what, const at::Tensor& x, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  check_float_tensor(what, "x", x, 4, "(N, C_in, H, W)");
  check_float_tensor(what, "weight", weight, 4, "(C_out, C_in/groups, kH, kW)");
  TORCH_CHECK_VALUE(x.scalar_type() == weight.scalar_type(), what, ": expected weight to have x's dtype (",
                    x.scalar_type(), "), got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == x.device(), what, ": expected weight on x's device (", x.device(), "), got ",
                    weight.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), what, ": expected bias of shape (",
                      weight.size(0), ",), got ", bias->sizes());
    TORCH_CHECK_VALUE(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(), what,
                      ": expected bias with x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got (",
                      bias->scalar_type(), ", ", bias->device(), ")");
  }
  const auto s = positive_pair(what, "stride", stride);
  const auto d = positive_pair(what, "dilation", dilation);
  TORCH_CHECK_VALUE(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, what,
                    ": expected padding to be a non-negative int or pair of ints, got ", echo_pair(padding));
  TORCH_CHECK_VALUE(groups >= 1 && x.size(1) % groups == 0 && weight.size(0) % groups == 0, what, ": groups=", groups,
                    " must divide in_channels (", x.size(1), ") and out_channels (", weight.size(0), ")");
  TORCH_CHECK_VALUE(weight.size(1) * groups == x.size(1), what, ": expected x to have ", weight.size(1) * groups,
                    " channels (weight.shape[1] * groups), got ", x.size(1));
  std::array<int64_t, 4> out{x.size(0), weight.size(0), 0, 0};
  for (int dim = 0; dim < 2; ++dim) {
    const int64_t span = x.size(2 + dim) + 2 * padding[dim] - d[dim] * (weight.size(2 + dim) - 1) - 1;
    out[2 + dim] = span < 0 ? 0 : span / s[dim] + 1;
  }
  TORCH_CHECK_VALUE(out[2] >= 1 && out[3] >= 1, what, ": the convolution's output would be ", out[2], "x", out[3],
                    "; x (", x.size(2), "x", x.size(3), ") is too small for a ", weight.size(2), "x", weight.size(3),
                    " kernel with this padding and dilation");
  return out;
}

}  // namespace fixedbranch
