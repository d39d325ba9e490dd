"""Stop-gradient on the identity path of a residual block: r(y) = sg(y) + f(y).

sg(y) is y in the forward pass and a constant in the backward pass, so dL/dy gets only f's term:
    unstopped:  dL/dy = g + F^T g        stopped:  dL/dy = F^T g        (g = dL/dr)
With the fused op, f is a fixed filter (here a Gaussian) and stop_gradient=(0,) stops the identity branch.
Checks, in float64:
  1. the forward is unchanged by the stop;
  2. the stopped gradient equals plain PyTorch's y.detach() + f(y);
  3. stopped and unstopped differ by exactly g, the identity path's term.
And the follow-up question "is training then the same as without the residual connection?": no. The gradient
has the no-skip form F^T g, but g is evaluated at r = y + f(y), a different forward than r = f(y); the last check
shows the two gradients differ.
"""

import sys

import torch
import torch.nn.functional as F

import fixedbranch as fb

torch.manual_seed(0)
bank = fb.filters.bank(fb.filters.gaussian(5, 1.5))  # one filter: f(y) = gaussian * y
y0 = torch.randn(2, 3, 12, 12, dtype=torch.float64)
target = torch.randn(2, 3, 12, 12, dtype=torch.float64)


def grad_of(residual):
    """dL/dy for L = ||r(y) - target||^2: a non-linear loss, so g depends on the forward values."""
    y = y0.clone().requires_grad_()
    r = residual(y)
    ((r - target) ** 2).sum().backward()
    return r.detach(), y.grad


def fused(stop):
    def residual(y):
        out = fb.fixed_branch(y, bank, stop_gradient=stop)  # cat([y, f(y)], 1)
        identity, filtered = out.split(y.shape[1], dim=1)
        return identity + filtered

    return residual


def plain_detach(y):
    f = F.conv2d(F.pad(y, (2, 2, 2, 2)), bank.expand(3, 1, 5, 5), groups=3)  # the same Gaussian, depthwise
    return y.detach() + f


r_stop, g_stop = grad_of(fused(stop=(0,)))
r_full, g_full = grad_of(fused(stop=()))
r_plain, g_plain = grad_of(plain_detach)
g_identity = 2 * (r_full - target)  # dL/dr, which the identity path passes to y unchanged when not stopped
_, g_noskip = grad_of(lambda y: fb.fixed_branch(y, bank)[:, 3:])  # r = f(y): no residual connection


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


checks = [
    ("forward with stop_gradient=(0,) == forward without", rel_err(r_stop, r_full), True),
    ("stopped dL/dy == plain PyTorch y.detach() + f(y)", rel_err(g_stop, g_plain), True),
    ("unstopped dL/dy - stopped dL/dy == g (the identity's term)", rel_err(g_full - g_stop, g_identity), True),
    ("stopped dL/dy != dL/dy of the block without the skip", rel_err(g_stop, g_noskip), False),
]
ok = True
for what, err, should_match in checks:
    passed = err < 1e-12 if should_match else err > 1e-3
    ok &= passed
    print(f"CHECK {what}: relative difference {err:.1e} {'OK' if passed else 'FAILED'}")
print("all checks passed" if ok else "SOME CHECKS FAILED")
sys.exit(0 if ok else 1)
