"""One CNN shared by 30 frames, feeding an LSTM: does the loss reach the CNN, and how do the 30 uses combine?

The CNN is the question's (24x48 frames, 5x5 convs, max-pool, fc to 20 features), with its first convolution a
FixedBranchConv2d (Sobel x/y branches). The LSTM's 0/1 output is the only label. Autograd follows the features
from the LSTM back into the CNN because they were computed from the CNN's weights; the shared weights receive the
sum of the gradients of all 30 uses. Checks, in float64:
  1. the CNN's weights do get a gradient (non-zero) from the LSTM's loss;
  2. folding the frames into the batch, (B*T, C, H, W), and one pass gives the same weight gradient as a loop
     of 30 separate per-frame passes through the same module (autograd accumulating into .grad);
  3. that gradient is the explicit sum of the 30 per-frame gradients (each frame given its own copy of the
     weights, so its share can be read separately).
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import fixedbranch as fb

torch.manual_seed(0)
dt = torch.float64
B, T = 2, 30


class FrameCNN(nn.Module):
    def __init__(self):
        super().__init__()
        bank = fb.filters.bank("sobel_x", "sobel_y")
        self.conv1 = fb.FixedBranchConv2d(1, 20, 5, bank=bank, dtype=dt)  # 20 channels x 3 branches out
        self.conv2 = nn.Conv2d(60, 50, 5, dtype=dt)
        self.fc = nn.Linear(3 * 9 * 50, 20, dtype=dt)

    def forward(self, x):  # (N, 1, 24, 48) -> (N, 20)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))


cnn = FrameCNN()
lstm = nn.LSTM(20, 50, batch_first=True, dtype=dt)
readout = nn.Linear(50, 1, dtype=dt)
frames = torch.randn(B, T, 1, 24, 48, dtype=dt)
labels = torch.tensor([0.0, 1.0], dtype=dt)


def loss_from(features):  # features: (B, T, 20)
    hidden, _ = lstm(features)
    return F.binary_cross_entropy_with_logits(readout(hidden[:, -1]).squeeze(1), labels)


# Frames folded into the batch: one pass of the CNN over B*T images.
loss_from(cnn(frames.flatten(0, 1)).view(B, T, 20)).backward()
folded = cnn.conv1.weight.grad.clone()
cnn.zero_grad()

# A loop of 30 per-frame passes through the same module; .grad accumulates over the 30 uses.
loss_from(torch.stack([cnn(frames[:, t]) for t in range(T)], dim=1)).backward()
looped = cnn.conv1.weight.grad.clone()

# Each frame with its own copy of the weights: autograd.grad returns the 30 per-frame shares separately.
params = dict(cnn.named_parameters())
copies = [{name: p.clone() for name, p in params.items()} for _ in range(T)]
features = torch.stack([functional_call(cnn, copies[t], (frames[:, t],)) for t in range(T)], dim=1)
per_frame = torch.autograd.grad(loss_from(features), [c["conv1.weight"] for c in copies])
norms = torch.stack([g.norm() for g in per_frame])
print(f"per-frame ||dL/d conv1.weight||: first {norms[0]:.2e}, last {norms[-1]:.2e} (later frames, nearer the "
      f"LSTM's output, weigh more); total {folded.norm():.2e}")


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


checks = [
    ("the LSTM's loss reaches the CNN: ||dL/d conv1.weight|| > 0", folded.norm().item() > 0, folded.norm().item()),
    ("frames folded into the batch == loop of 30 per-frame passes", rel_err(folded, looped) < 1e-12,
     rel_err(folded, looped)),
    ("== explicit sum of the 30 per-frame gradients", rel_err(folded, sum(per_frame)) < 1e-12,
     rel_err(folded, sum(per_frame))),
]
ok = True
for what, passed, value in checks:
    ok &= passed
    print(f"CHECK {what}: {value:.1e} {'OK' if passed else 'FAILED'}")
print("all checks passed" if ok else "SOME CHECKS FAILED")
sys.exit(0 if ok else 1)
