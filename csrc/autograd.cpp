// Autograd of the fixedbranch operators, in C++ (as torchvision registers its ops'): a Python autograd formula cost
// more per call than the whole fused kernel on a small feature map. The branch backward is linear in the gradient,
// so it needs only the bank; its own backward is the forward with stopped branches zeroed, which keeps every order
// of derivative on the fused kernels. The conv op saves only x and weight (docs/design.md, "Operators").
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <initializer_list>
#include <string>
#include <vector>

namespace fixedbranch {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& y, const at::Tensor& bank, c10::string_view padding_mode,
                        c10::IntArrayRef stop, bool identity, c10::string_view order, c10::IntArrayRef stride) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fixedbranch::fixed_branch", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, c10::IntArrayRef,
                                         bool, c10::string_view, c10::IntArrayRef)>();
  return op.call(y, bank, padding_mode, stop, identity, order, stride);
}

at::Tensor call_backward(const at::Tensor& grad, const at::Tensor& bank, c10::string_view padding_mode,
                         c10::IntArrayRef stop, bool identity, c10::string_view order, c10::IntArrayRef stride,
                         c10::SymIntArrayRef input_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fixedbranch::_fixed_branch_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, c10::IntArrayRef,
                                         bool, c10::string_view, c10::IntArrayRef, c10::SymIntArrayRef)>();
  return op.call(grad, bank, padding_mode, stop, identity, order, stride, input_size);
}

at::Tensor call_transpose(const at::Tensor& z, const at::Tensor& bank, c10::string_view padding_mode, bool identity,
                          c10::string_view order, c10::IntArrayRef stride, at::OptionalSymIntArrayRef output_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fixedbranch::fixed_branch_transpose", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, bool,
                                         c10::string_view, c10::IntArrayRef, at::OptionalSymIntArrayRef)>();
  return op.call(z, bank, padding_mode, identity, order, stride, output_size);
}

at::Tensor call_conv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     const at::Tensor& bank, c10::IntArrayRef stride, c10::IntArrayRef padding,
                     c10::IntArrayRef dilation, int64_t groups, c10::string_view padding_mode, c10::IntArrayRef stop,
                     bool identity, c10::string_view order, c10::IntArrayRef filter_stride) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fixedbranch::fixed_branch_conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, const at::Tensor&,
                            c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t, c10::string_view,
                            c10::IntArrayRef, bool, c10::string_view, c10::IntArrayRef)>();
  return op.call(x, weight, bias, bank, stride, padding, dilation, groups, padding_mode, stop, identity, order,
                 filter_stride);
}

// The branch options, kept on the autograd node.
struct Options {
  std::string padding_mode, order;
  std::vector<int64_t> stop, stride;
  bool identity;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["padding_mode"] = padding_mode;
    ctx->saved_data["order"] = order;
    ctx->saved_data["stop"] = stop;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["identity"] = identity;
  }
  static Options load(AutogradContext* ctx) {
    return {ctx->saved_data["padding_mode"].toStringRef(), ctx->saved_data["order"].toStringRef(),
            ctx->saved_data["stop"].toIntVector(), ctx->saved_data["stride"].toIntVector(),
            ctx->saved_data["identity"].toBool()};
  }
};

// Zeroes the output channels of stopped branches (the slot of filter k is k - 1 + identity). Built from tensor ops
// alone, so that it traces under fake tensors (torch.compile, export).
at::Tensor zero_stopped(const at::Tensor& out, const Options& o, int64_t num_filters) {
  if (o.stop.empty()) return out;
  const int64_t branches = num_filters + (o.identity ? 1 : 0), channels = out.size(1) / branches;
  const at::Tensor index = at::arange(out.size(1), out.options().dtype(at::kLong));
  const at::Tensor slot = o.order == "branch" ? index.div(channels, "floor") : index.remainder(branches);
  at::Tensor mask = at::zeros_like(slot, slot.options().dtype(at::kBool));
  for (const int64_t k : o.stop) mask = mask.logical_or(slot.eq(k == 0 ? 0 : k - 1 + (o.identity ? 1 : 0)));
  return out.masked_fill(mask.view({1, -1, 1, 1}), 0);
}

// Whether a call has anything to record: an input that requires grad (in grad mode) or carries a forward-mode
// tangent (which the Functions reject). A call with nothing to record runs the operator below autograd directly:
// building the node and saving the options took a tenth of a call's time on a 1x2x8x8 input, for nothing.
bool records(std::initializer_list<const at::Tensor*> inputs) {
  const bool grad_mode = at::GradMode::is_enabled();
  for (const at::Tensor* t : inputs) {
    if (t && t->defined() && ((grad_mode && t->requires_grad()) || t->_fw_grad(/*level=*/0).defined())) return true;
  }
  return false;
}

class BranchBackward : public torch::autograd::Function<BranchBackward> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& grad, const Variable& bank, const Options& o,
                          c10::SymIntArrayRef input_size) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Variable grad_y = call_backward(grad, bank, o.padding_mode, o.stop, o.identity, o.order, o.stride, input_size);
    o.save(ctx);
    ctx->save_for_backward({bank});
    return grad_y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Options o = Options::load(ctx);
    const Variable bank = ctx->get_saved_variables()[0];
    Variable grad_grad;
    if (ctx->needs_input_grad(0)) {
      grad_grad = zero_stopped(call_forward(grads[0], bank, o.padding_mode, o.stop, o.identity, o.order, o.stride), o,
                               bank.size(0));
    }
    return {grad_grad, Variable(), Variable(), Variable()};
  }
};

Variable branch_backward(const Variable& grad, const Variable& bank, const Options& o,
                         c10::SymIntArrayRef input_size) {
  // Within a backward that builds no graph (the usual one), grad records nothing.
  if (!records({&grad, &bank})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_backward(grad, bank, o.padding_mode, o.stop, o.identity, o.order, o.stride, input_size);
  }
  return BranchBackward::apply(grad, bank, o, input_size);
}

class Branch : public torch::autograd::Function<Branch> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& y, const Variable& bank, const Options& o) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Variable out = call_forward(y, bank, o.padding_mode, o.stop, o.identity, o.order, o.stride);
    // After the operator's checks: y is 4-D.
    o.save(ctx);
    ctx->saved_data["height"] = y.sym_size(2);
    ctx->saved_data["width"] = y.sym_size(3);
    ctx->save_for_backward({bank});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Options o = Options::load(ctx);
    const Variable bank = ctx->get_saved_variables()[0];
    Variable grad_y;
    if (ctx->needs_input_grad(0)) {
      const std::vector<c10::SymInt> size{ctx->saved_data["height"].toSymInt(), ctx->saved_data["width"].toSymInt()};
      grad_y = branch_backward(grads[0], bank, o, size);
    }
    return {grad_y, Variable(), Variable()};
  }
};

// The adjoint of fixed_branch. It is linear in z, and its adjoint is fixed_branch itself, so its backward is the
// forward operator (whose own backward brings back the fused adjoint for every further order).
class BranchTranspose : public torch::autograd::Function<BranchTranspose> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& z, const Variable& bank, const Options& o,
                          at::OptionalSymIntArrayRef output_size) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Variable y = call_transpose(z, bank, o.padding_mode, o.identity, o.order, o.stride, output_size);
    o.save(ctx);
    ctx->save_for_backward({bank});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Options o = Options::load(ctx);
    const Variable bank = ctx->get_saved_variables()[0];
    Variable grad_z;
    if (ctx->needs_input_grad(0)) {
      grad_z = call_forward(grads[0], bank, o.padding_mode, {}, o.identity, o.order, o.stride);
    }
    return {grad_z, Variable(), Variable(), Variable()};
  }
};

class Conv : public torch::autograd::Function<Conv> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& x, const Variable& weight,
                          const c10::optional<Variable>& bias, const Variable& bank, c10::IntArrayRef stride,
                          c10::IntArrayRef padding,
                          c10::IntArrayRef dilation, int64_t groups, const Options& o) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Variable out = call_conv(x, weight, bias, bank, stride, padding, dilation, groups, o.padding_mode, o.stop,
                             o.identity, o.order, o.stride);
    // After the operator's checks: x and weight are 4-D, the strides and dilations positive.
    o.save(ctx);
    ctx->saved_data["conv_stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = bias.has_value();
    // y's size, which a filter stride does not let the backward read off the gradient.
    for (int d = 0; d < 2; ++d) {
      ctx->saved_data[d == 0 ? "height" : "width"] =
          (x.sym_size(2 + d) + 2 * padding[d] - dilation[d] * (weight.sym_size(2 + d) - 1) - 1) / stride[d] + 1;
    }
    ctx->save_for_backward({x, weight, bank});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Options o = Options::load(ctx);
    const auto saved = ctx->get_saved_variables();
    const Variable &x = saved[0], &weight = saved[1], &bank = saved[2];
    const std::vector<c10::SymInt> size{ctx->saved_data["height"].toSymInt(), ctx->saved_data["width"].toSymInt()};
    const Variable grad_y = branch_backward(grads[0], bank, o, size);
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   has_bias && ctx->needs_input_grad(2)};
    const std::vector<c10::SymInt> bias_sizes{weight.sym_size(0)};
    auto grads_in = at::convolution_backward_symint(
        grad_y, x, weight, has_bias ? c10::optional<c10::SymIntArrayRef>(bias_sizes) : c10::nullopt,
        c10::fromIntArrayRefSlow(ctx->saved_data["conv_stride"].toIntVector()),
        c10::fromIntArrayRefSlow(ctx->saved_data["padding"].toIntVector()),
        c10::fromIntArrayRefSlow(ctx->saved_data["dilation"].toIntVector()), false,
        c10::fromIntArrayRefSlow(std::vector<int64_t>{0, 0}), ctx->saved_data["groups"].toInt(), mask);
    variable_list out(13);
    out[0] = std::get<0>(grads_in);
    out[1] = std::get<1>(grads_in);
    out[2] = std::get<2>(grads_in);
    return out;
  }
};

Options options(c10::string_view padding_mode, c10::IntArrayRef stop, bool identity, c10::string_view order,
                c10::IntArrayRef stride) {
  return {std::string(padding_mode), std::string(order), stop.vec(), stride.vec(), identity};
}

at::Tensor fixed_branch_autograd(const at::Tensor& y, const at::Tensor& bank, c10::string_view padding_mode,
                                 c10::IntArrayRef stop, bool identity, c10::string_view order,
                                 c10::IntArrayRef stride) {
  if (!records({&y, &bank})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_forward(y, bank, padding_mode, stop, identity, order, stride);
  }
  return Branch::apply(y, bank, options(padding_mode, stop, identity, order, stride));
}

at::Tensor fixed_branch_backward_autograd(const at::Tensor& grad, const at::Tensor& bank,
                                          c10::string_view padding_mode, c10::IntArrayRef stop, bool identity,
                                          c10::string_view order, c10::IntArrayRef stride,
                                          c10::SymIntArrayRef input_size) {
  if (!records({&grad, &bank})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_backward(grad, bank, padding_mode, stop, identity, order, stride, input_size);
  }
  return branch_backward(grad, bank, options(padding_mode, stop, identity, order, stride), input_size);
}

at::Tensor fixed_branch_transpose_autograd(const at::Tensor& z, const at::Tensor& bank, c10::string_view padding_mode,
                                           bool identity, c10::string_view order, c10::IntArrayRef stride,
                                           at::OptionalSymIntArrayRef output_size) {
  if (!records({&z, &bank})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_transpose(z, bank, padding_mode, identity, order, stride, output_size);
  }
  return BranchTranspose::apply(z, bank, options(padding_mode, {}, identity, order, stride), output_size);
}

at::Tensor fixed_branch_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight,
                                        const c10::optional<at::Tensor>& bias, const at::Tensor& bank,
                                        c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                        int64_t groups, c10::string_view padding_mode, c10::IntArrayRef stop,
                                        bool identity, c10::string_view order, c10::IntArrayRef filter_stride) {
  if (!records({&x, &weight, bias.has_value() ? &*bias : nullptr, &bank})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_conv(x, weight, bias, bank, stride, padding, dilation, groups, padding_mode, stop, identity, order,
                     filter_stride);
  }
  return Conv::apply(x, weight, bias, bank, stride, padding, dilation, groups,
                     options(padding_mode, stop, identity, order, filter_stride));
}

}  // namespace

TORCH_LIBRARY_IMPL(fixedbranch, Autograd, m) {
  m.impl("fixed_branch", &fixed_branch_autograd);
  m.impl("_fixed_branch_backward", &fixed_branch_backward_autograd);
  m.impl("fixed_branch_conv2d", &fixed_branch_conv2d_autograd);
  m.impl("fixed_branch_transpose", &fixed_branch_transpose_autograd);
}

}  // namespace fixedbranch
