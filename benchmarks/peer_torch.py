"""The same train steps in PyTorch (CPU), timed like bench_train_step.py.

``--model capsnet``: Conv1, PrimaryCaps, DigitCaps with W_ij, dynamic routing,
decoder; margin + 0.0005 x reconstruction loss, Adam.
``--model efficient_capsnet``: Efficient-CapsNet written from the paper (four
convolutions with ReLU and BatchNorm, depthwise primary capsules, exp-squash,
self-attention routing with its bias, decoder); margin + 0.0005 x SSE, Adam.
``--model matrix_capsnet``: matrix capsules with EM routing (``peer_torch_matrix.py``),
spread loss, Adam.
torch is an optional extra, never a dependency of capsjax: ``pip install torch==2.13.0``.

  python benchmarks/peer_torch.py --size 28 --batch_size 32 [--json]
  python benchmarks/peer_torch.py --model efficient_capsnet --batch_size 16
  python benchmarks/peer_torch.py --model matrix_capsnet --routing_iters 2 --batch_size 32
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


def squash(s, dim=-1):
  sq = (s * s).sum(dim, keepdim=True)
  return s * (sq.clamp_min(1e-12).sqrt() / (1 + sq))


class CapsNet(nn.Module):
  def __init__(self, size=28, routing_iters=3, num_digits=1):
    super().__init__()
    self.size, self.routing_iters, self.num_digits = size, routing_iters, num_digits
    self.conv1 = nn.Conv2d(1, 256, 9)
    self.primary = nn.Conv2d(256, 256, 9, stride=2)
    hw = ((size - 8) - 9) // 2 + 1
    self.n_in = hw * hw * 32
    self.W = nn.Parameter(0.01 * torch.randn(self.n_in, 10, 16, 8))
    self.decoder = nn.Sequential(nn.Linear(160, 512), nn.ReLU(), nn.Linear(512, 1024), nn.ReLU(),
                                 nn.Linear(1024, size * size), nn.Sigmoid())

  def forward(self, x, labels):
    b = x.shape[0]
    x = F.relu(self.conv1(x))
    u = self.primary(x)                                   # (B, 256, h, w)
    u = u.permute(0, 2, 3, 1).reshape(b, -1, 8)          # (B, n_in, 8)
    u = squash(u)
    u_hat = torch.einsum("bik,ijdk->bijd", u, self.W)    # (B, n_in, 10, 16)
    logits = torch.zeros(b, self.n_in, 10, device=x.device)
    for i in range(self.routing_iters):
      c = logits.softmax(dim=-1)
      v = squash(torch.einsum("bij,bijd->bjd", c, u_hat))
      if i < self.routing_iters - 1:
        logits = logits + torch.einsum("bijd,bjd->bij", u_hat, v)
    lengths = v.norm(dim=-1)
    masks = F.one_hot(labels, 10).float()                 # (B, K, 10)
    recon = self.decoder((masks[..., None] * v[:, None]).flatten(2))
    return lengths, recon


def exp_squash(s, dim=-1):
  n = s.norm(dim=dim, keepdim=True)
  return -torch.expm1(-n) * s / n.clamp_min(1e-20)


class EfficientCapsNet(nn.Module):
  """Efficient-CapsNet for 28x28 MNIST, NHWC-free: torch's NCHW with oneDNN."""

  def __init__(self):
    super().__init__()
    layers, channels = [], 1
    for features, kernel, stride in ((32, 5, 1), (64, 3, 1), (64, 3, 1), (128, 3, 2)):
      layers += [nn.Conv2d(channels, features, kernel, stride), nn.ReLU(),
                 nn.BatchNorm2d(features, eps=1e-3, momentum=0.01)]
      channels = features
    self.features = nn.Sequential(*layers)
    self.primary = nn.Conv2d(128, 128, 9, groups=128)      # (B, 128, 1, 1) -> 16 x 8
    self.W = nn.Parameter(0.05 * torch.randn(16, 10, 8, 16))
    self.b = nn.Parameter(torch.zeros(16, 10))
    self.decoder = nn.Sequential(nn.Linear(160, 512), nn.ReLU(), nn.Linear(512, 1024), nn.ReLU(),
                                 nn.Linear(1024, 784), nn.Sigmoid())

  def forward(self, x, labels):
    u = exp_squash(self.primary(self.features(x)).view(x.shape[0], 16, 8))
    u_hat = torch.einsum("bid,ijdk->bijk", u, self.W)            # (B, 16, 10, 16)
    # Self-attention: each input capsule's agreement with all the others, per class.
    agreement = torch.einsum("bijk,bljk->bij", u_hat, u_hat) / 4.0
    c = agreement.softmax(dim=-1) + self.b            # over the classes
    v = exp_squash(torch.einsum("bij,bijk->bjk", c, u_hat))
    lengths = v.norm(dim=-1)
    masks = F.one_hot(labels, 10).float()
    recon = self.decoder((masks[..., None] * v[:, None]).flatten(2))
    return lengths, recon


def train_step_fn(model, opt):
  def step(images, labels, multi_hot, components):
    lengths, recon = model(images, labels)
    margin = (multi_hot * F.relu(0.9 - lengths) ** 2
              + 0.5 * (1 - multi_hot) * F.relu(lengths - 0.1) ** 2).sum(-1)
    sse = ((recon - components.flatten(2)) ** 2).sum((1, 2))
    loss = (margin + 0.0005 * sse).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss
  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--model", choices=("capsnet", "efficient_capsnet", "matrix_capsnet"),
                      default="capsnet")
  parser.add_argument("--size", type=int, default=28)
  parser.add_argument("--routing_iters", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  torch.manual_seed(0)
  k = 2 if args.size == 36 else 1
  if args.model == "matrix_capsnet":
    import peer_torch_matrix  # pylint: disable=import-outside-toplevel
    model = peer_torch_matrix.MatrixCapsNet(args.routing_iters)
    make_step = peer_torch_matrix.train_step_fn
  else:
    model = (EfficientCapsNet() if args.model == "efficient_capsnet"
             else CapsNet(args.size, args.routing_iters, k))
    make_step = train_step_fn
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  step = make_step(model, opt)
  b = args.batch_size
  images = torch.rand(b, 1, args.size, args.size)
  labels = torch.stack([torch.randperm(10)[:k] for _ in range(b)])
  multi_hot = F.one_hot(labels, 10).sum(1).float()
  components = torch.rand(b, k, args.size, args.size)
  for _ in range(args.warmup):
    step(images, labels, multi_hot, components)
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    step(images, labels, multi_hot, components)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  row = {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
         "model": args.model,
         "size": args.size, "routing_iters": args.routing_iters, "batch_size": b,
         "step_s": step_s, "images_per_s": b / step_s}
  print(json.dumps(row) if args.json else
        f"torch {args.model} size {args.size} r{args.routing_iters} batch {b}: "
        f"{1e3 * step_s:.1f} ms/step, {b / step_s:.1f} images/s")


if __name__ == "__main__":
  main()
