"""Matrix capsules with EM routing in PyTorch (CPU), for peer_torch.py --model matrix_capsnet.

Written for speed from the paper (Hinton, Sabour & Frosst, ICLR 2018), the small
network of capsjax's ``matrix_capsnet``: ReLU conv 5x5/2 (64), primary capsules
(8 types, 1x1), ConvCaps1 3x3/2 and ConvCaps2 3x3/1 (16 types each), class capsules
with coordinate addition; EM routing with the variance floor 1e-4, a child of the
convolutional layers normalised over every parent it reaches (all covering windows,
all types); spread loss, Adam.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

_FLOOR = 1e-4


def em(votes, a, beta_u, beta_a, iters, normalise):
  """votes (N, I, J, 16), a (N, I) -> poses (N, J, 16), activations (N, J)."""
  lambdas = [0.01 * (1 - 0.95 ** (t + 1)) / (1 - 0.95 ** iters) for t in range(iters)]
  centre = votes.mean(1, keepdim=True).detach()
  v = votes - centre
  r = normalise(torch.zeros(votes.shape[:3]))
  for t in range(iters):
    w = r * a[..., None]                                   # (N, I, J)
    mass = w.sum(1)                                        # (N, J)
    share = w / mass.clamp_min(1e-30)[:, None]
    mu = torch.einsum("nij,nijh->njh", share, v)
    var = (torch.einsum("nij,nijh->njh", share, v * v) - mu * mu).clamp_min(0)
    log_var = torch.log(var + _FLOOR)
    cost = ((beta_u[:, None] + 0.5 * log_var) * mass[..., None]).sum(-1)
    logit = lambdas[t] * (beta_a - cost)
    if t == iters - 1:
      return mu + centre[:, 0], torch.sigmoid(logit)
    log_p = -0.5 * (((v - mu[:, None]) ** 2) * torch.exp(-log_var)[:, None]
                    + log_var[:, None] + math.log(2 * math.pi)).sum(-1)
    r = normalise(F.logsigmoid(logit)[:, None] + log_p)


def votes_of(poses, w):
  """poses (..., I, 16), w (I, J, 4, 4) -> (..., I, J, 16)."""
  m = poses.reshape(*poses.shape[:-1], 4, 4)
  return torch.einsum("...irq,ijqc->...ijrc", m, w).reshape(*poses.shape[:-1], w.shape[1], 16)


class ConvCaps(nn.Module):
  def __init__(self, types_in, types_out, kernel, stride, iters):
    super().__init__()
    self.k, self.s, self.iters, self.t_in, self.t_out = kernel, stride, iters, types_in, types_out
    self.w = nn.Parameter(torch.randn(kernel * kernel * types_in, types_out, 4, 4))
    self.beta_u = nn.Parameter(torch.zeros(types_out))
    self.beta_a = nn.Parameter(torch.zeros(types_out))

  def forward(self, poses, act):                 # (B, T, 16, H, W), (B, T, H, W)
    b, t, _, h, w = poses.shape
    k, s = self.k, self.s
    cols = F.unfold(poses.reshape(b, t * 16, h, w), k, stride=s)       # (B, T*16*k*k, P)
    p = cols.shape[-1]
    cols = cols.reshape(b, t, 16, k * k, p).permute(0, 4, 3, 1, 2).reshape(b * p, k * k * t, 16)
    a = F.unfold(act, k, stride=s).reshape(b, t, k * k, p).permute(0, 3, 2, 1)
    a = a.reshape(b * p, k * k * t)
    votes = votes_of(cols, self.w)                                     # (B*P, k*k*T, J, 16)

    def normalise(logits):                       # (B*P, k*k*T, J): over every parent reached
      e = torch.exp(logits - logits.amax().detach())
      per_entry = e.sum(-1).reshape(b, p, k * k, t).permute(0, 3, 2, 1).reshape(b, t * k * k, p)
      total = F.fold(per_entry, (h, w), k, stride=s)                   # (B, T, H, W)
      back = F.unfold(total, k, stride=s).reshape(b, t, k * k, p).permute(0, 3, 2, 1)
      return e / back.reshape(b * p, k * k * t, 1).clamp_min(1e-30)

    mu, a_out = em(votes, a, self.beta_u, self.beta_a, self.iters, normalise)
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    mu = mu.reshape(b, ho, wo, self.t_out, 16).permute(0, 3, 4, 1, 2)
    return mu, a_out.reshape(b, ho, wo, self.t_out).permute(0, 3, 1, 2)


class MatrixCapsNet(nn.Module):
  def __init__(self, iters=2, classes=10):
    super().__init__()
    self.iters = iters
    self.conv1 = nn.Conv2d(1, 64, 5, stride=2)
    self.pose = nn.Conv2d(64, 8 * 16, 1)
    self.act = nn.Conv2d(64, 8, 1)
    self.caps1 = ConvCaps(8, 16, 3, 2, iters)
    self.caps2 = ConvCaps(16, 16, 3, 1, iters)
    self.w = nn.Parameter(torch.randn(16, classes, 4, 4))
    self.beta_u = nn.Parameter(torch.zeros(classes))
    self.beta_a = nn.Parameter(torch.zeros(classes))

  def forward(self, images):
    x = F.relu(self.conv1(images))                                     # (B, 64, 12, 12)
    b, _, h, w = x.shape
    poses = self.pose(x).reshape(b, 8, 16, h, w)
    act = torch.sigmoid(self.act(x))
    poses, act = self.caps1(poses, act)                                # (B, 16, 16, 5, 5)
    poses, act = self.caps2(poses, act)                                # (B, 16, 16, 3, 3)
    _, t, _, h, w = poses.shape
    child = poses.permute(0, 3, 4, 1, 2)                               # (B, H, W, T, 16)
    votes = votes_of(child, self.w)                                    # (B, H, W, T, C, 16)
    centres = (torch.arange(h) + 0.5) / h
    offset = torch.zeros(h, w, 16)
    offset[:, :, 3] = centres[:, None]
    offset[:, :, 7] = centres[None, :]
    votes = (votes + offset[:, :, None, None]).reshape(b, h * w * t, -1, 16)
    a = act.permute(0, 2, 3, 1).reshape(b, h * w * t)
    _, scores = em(votes, a, self.beta_u, self.beta_a, self.iters,
                   lambda logits: logits.softmax(-1))
    return scores


def train_step_fn(model, opt, margin=0.2):
  def step(images, labels, multi_hot, components):
    del multi_hot, components
    scores = model(images)
    target = scores.gather(1, labels[:, :1])
    loss = (F.relu(margin - (target - scores)) ** 2).sum(-1) - margin ** 2   # spread loss
    loss = loss.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss
  return step
