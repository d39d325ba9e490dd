"""Back-propagation through a concatenation: each input gets its slice; a tensor concatenated with itself gets the sum.

Three questions, three checks (float64):
  1. Two layers' outputs concatenated along the batch dimension, then one fc layer and one loss: each layer
     receives exactly its own slice of the gradient of the concatenation.
  2. The same with two separate losses instead of the concatenation: identical weight gradients when the
     losses are summed (reduction="sum"; a "mean" over x+y items weights the items differently).
  3. A tensor concatenated with itself receives the sum of both slices' gradients, and the layer that made it is
     updated once, with that sum. Along the channel dimension this is the fused op with the identity filter as
     its bank, cat([y, y], 1); along the batch dimension it is torch.cat([a, a], 0). With the labels duplicated
     too, the gradient is exactly twice that of the single copy for a summed loss, and unchanged for a mean.
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn

import fixedbranch as fb

torch.manual_seed(0)
dt = torch.float64
layer_a, layer_b, head = (nn.Linear(6, 5, dtype=dt), nn.Linear(4, 5, dtype=dt), nn.Linear(5, 3, dtype=dt))
xa, xb = torch.randn(7, 6, dtype=dt), torch.randn(9, 4, dtype=dt)  # batch sizes x = 7 and y = 9
la, lb = torch.randint(0, 3, (7,)), torch.randint(0, 3, (9,))


def grads(*modules):
    out = [p.grad.clone() for m in modules for p in m.parameters()]
    for m in modules:
        m.zero_grad()
    return out


def rel_err(a, b):
    return max(((u - v).abs().max() / v.abs().max()).item() for u, v in zip(a, b))


checks = []

# 1. Concatenate along the batch dimension; hooks record what reaches each layer and the concatenation.
a, b = layer_a(xa), layer_b(xb)
seen = {}
for name, t in (("a", a), ("b", b)):
    t.register_hook(lambda g, name=name: seen.setdefault(name, g))
both = torch.cat([a, b], dim=0)
both.register_hook(lambda g: seen.setdefault("cat", g))
F.cross_entropy(head(both), torch.cat([la, lb]), reduction="sum").backward()
g_concat = grads(layer_a, layer_b, head)
sliced = [seen["cat"][:7], seen["cat"][7:]]
checks.append(("batch concat: A gets rows [0, x), B gets rows [x, x+y)", rel_err([seen["a"], seen["b"]], sliced)))

# 2. Two separate losses, summed.
loss = F.cross_entropy(head(layer_a(xa)), la, reduction="sum") + F.cross_entropy(head(layer_b(xb)), lb, reduction="sum")
loss.backward()
g_separate = grads(layer_a, layer_b, head)
checks.append(("one loss on the concatenation == two separate losses (weights of A, B, fc)",
               rel_err(g_separate, g_concat)))

# 3a. Channel concat with itself through the fused op: bank = the 1x1 identity filter [[1]].
y = torch.randn(2, 3, 5, 5, dtype=dt, requires_grad=True)
out = fb.fixed_branch(y, torch.ones(1, 1, 1, dtype=dt))
g = torch.randn_like(out)
out.backward(g)
checks.append(("fixed_branch(y, [[1]]) == torch.cat([y, y], 1)", rel_err([out], [torch.cat([y, y], 1)])))
checks.append(("dL/dy == g_0 + g_1", rel_err([y.grad], [g[:, :3] + g[:, 3:]])))

# 3b. Batch concat with itself, labels duplicated: sum -> twice the single copy's gradient, mean -> the same.
for reduction, factor in (("sum", 2.0), ("mean", 1.0)):
    F.cross_entropy(head(layer_a(xa)), la, reduction=reduction).backward()
    single = grads(layer_a)
    F.cross_entropy(head(torch.cat([layer_a(xa)] * 2)), torch.cat([la, la]), reduction=reduction).backward()
    doubled = grads(layer_a)
    checks.append((f"cat([A, A], 0), reduction={reduction!r}: A's gradient is {factor:g}x the single copy's",
                   rel_err(doubled, [factor * s for s in single])))
    head.zero_grad()

ok = True
for what, err in checks:
    passed = err < 1e-12
    ok &= passed
    print(f"CHECK {what}: relative error {err:.1e} {'OK' if passed else 'FAILED'}")
print("all checks passed" if ok else "SOME CHECKS FAILED")
sys.exit(0 if ok else 1)
