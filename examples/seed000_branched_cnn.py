"""Fixed-weight filters in parallel branches: does autograd do the "accumulative back-propagation" by itself?

Network: conv -> [identity, sobel_x, sobel_y, laplacian4, gaussian] branches -> cat -> ReLU/pool -> three fc layers.
Splitting dL/dout into the branch slices g_0 .. g_K, the gradient reaching the conv output y is

    dL/dy = g_0 + sum_k F_k^T g_k          (F_k^T: the adjoint of "zero-pad, then correlate with F_k")

Yes: autograd sums the gradients of every use of y by itself, plain PyTorch and the fused layer alike; nothing
needs to be added. This script computes dL/dy three ways and checks they agree, in float64 so that agreement
means 1e-12, not "close":
  1. what the fused op sends back (y kept as a separate tensor so its .grad is visible);
  2. by hand: g_0 plus, per filter, F.conv_transpose2d(g_k, F_k), the exact adjoint of a zero-padded correlation;
  3. the sum of fb.branch_contributions(g), each branch's share.
It also checks that FixedBranchConv2d (conv + branches as one node) gives the conv's weight the same gradient as
nn.Conv2d + torch.cat of plain depthwise convolutions.
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn

import fixedbranch as fb

torch.manual_seed(0)
dtype = torch.float64
bank = fb.filters.bank("sobel_x", "sobel_y", "laplacian4", fb.filters.gaussian(3, 1.0))  # (K=4, 3, 3)
K, C = bank.shape[0], 6
x = torch.randn(8, 1, 16, 16, dtype=dtype)
labels = torch.randint(0, 10, (8,))
conv = nn.Conv2d(1, C, 3, padding=1, dtype=dtype)
head = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear((K + 1) * C * 64, 64, dtype=dtype),
                     nn.ReLU(), nn.Linear(64, 32, dtype=dtype), nn.ReLU(), nn.Linear(32, 10, dtype=dtype))

# 1. The fused branches. y is kept so we can read its gradient; the tensor hook records dL/dout.
y = conv(x)
y.retain_grad()
out = fb.fixed_branch(y, bank)  # cat([y, F_1*y, ..., F_K*y], 1)
captured = {}
out.register_hook(lambda g: captured.setdefault("g", g))
F.cross_entropy(head(out), labels).backward()
g, grad_y_fused = captured["g"], y.grad

# 2. By hand. conv_transpose2d with the same weight and padding is the adjoint of conv2d: the transposed filter.
slices = g.split(C, dim=1)  # g_0, g_1, ..., g_K
by_hand = slices[0].clone()
for k in range(K):
    weight = bank[k].expand(C, 1, 3, 3)  # depthwise: the same filter for every channel
    by_hand += F.conv_transpose2d(slices[k + 1], weight, padding=1, groups=C)

# 3. Each branch's share, summed.
shares = fb.branch_contributions(g, bank)  # (K+1, N, C, H, W)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# The conv's weight gradient through the fused layer and through plain nn.Conv2d + depthwise convs + torch.cat.
layer = fb.FixedBranchConv2d.from_conv2d(conv, bank=bank)
conv.weight.grad = None
F.cross_entropy(head(layer(x)), labels).backward()
F.cross_entropy(head(fb.reference.fixed_branch(conv(x), bank)), labels).backward()

names = ["identity"] + ["sobel_x", "sobel_y", "laplacian4", "gaussian"]
print("share of ||dL/dy|| per branch:  " + ", ".join(
    f"{n} {s.norm() / shares.flatten(1).norm(dim=1).sum():.1%}" for n, s in zip(names, shares)))
checks = {
    "fused dL/dy == g_0 + sum_k F_k^T g_k (by hand, conv_transpose2d)": rel_err(grad_y_fused, by_hand),
    "fused dL/dy == sum of fb.branch_contributions": rel_err(grad_y_fused, shares.sum(0)),
    "FixedBranchConv2d weight grad == nn.Conv2d + torch.cat weight grad": rel_err(layer.weight.grad, conv.weight.grad),
}
ok = True
for what, err in checks.items():
    passed = err < 1e-12
    ok &= passed
    print(f"CHECK {what}: relative error {err:.1e} {'OK' if passed else 'FAILED'}")
print("all checks passed" if ok else "SOME CHECKS FAILED")
sys.exit(0 if ok else 1)
