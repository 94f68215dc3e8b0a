"""Train state, loss, and the jitted data-parallel train and eval steps.

One train-step function serves one CPU, one GPU and every device of a pod: it
is ``jax.jit`` over a ``jax.sharding.Mesh`` of all devices with a single
``data`` axis. Inside ``jax.shard_map`` each device computes the gradient of
its slice of the global batch and ``lax.pmean`` averages them (the pmap model
on the current API); the optimizer update runs replicated. The state buffers
are donated.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from capsjax.losses import margin_loss, reconstruction_loss
from capsjax.metrics import per_digit_correct, strict_correct
from capsjax.models import CapsNet
from capsjax.training.config import TrainConfig

__all__ = [
    "TrainState", "make_model", "make_schedule", "make_optimizer", "init_state", "loss_fn", "make_mesh",
    "make_train_step", "make_eval_step", "shard_batch",
]

Batch = dict[str, Any]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. The data needs no state: batch
  ``step`` is a pure function of ``(seed, step)``."""
  step: jax.Array
  params: Any
  opt_state: Any


def make_model(config: TrainConfig) -> CapsNet:
  return CapsNet(
      num_classes=10, routing_iters=config.routing_iters,
      num_reconstructions=config.num_digits,
      stop_gradient_inner=config.stop_gradient_inner,
      digit_caps_init=config.digit_caps_init,
      primary_caps_scale=config.primary_caps_scale,
      dtype=jnp.bfloat16 if config.precision == "bf16" else jnp.float32)


def make_schedule(config: TrainConfig) -> optax.Schedule:
  """The official learning rate: ``lr * rate^(step / decay_steps)``, floored at ``lr_min``."""
  return optax.exponential_decay(
      init_value=config.lr, transition_steps=config.decay_steps,
      decay_rate=config.lr_decay_rate, end_value=config.lr_min)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """Adam on :func:`make_schedule`."""
  return optax.adam(make_schedule(config))


def init_state(model: CapsNet, tx: optax.GradientTransformation, image_size: int,
               seed: int) -> TrainState:
  images = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(seed), images)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def loss_fn(params, model: CapsNet, batch: Batch, recon_weight: float):
  """Margin loss + ``recon_weight`` x reconstruction SSE, per example, batch mean.

  The decoder is masked by the true labels; with two labels (MultiMNIST) each
  digit is reconstructed by its own masked pass and compared with its
  component image.
  """
  out = model.apply({"params": params}, batch["image"], batch["labels"])
  margin = margin_loss(out.lengths, batch["multi_hot"])
  k = batch["labels"].shape[1]
  recon = sum(reconstruction_loss(out.reconstructions[:, i], batch["components"][:, i])
              for i in range(k))
  loss = jnp.mean(margin + recon_weight * recon)
  metrics = {
      "loss": loss,
      "margin_loss": jnp.mean(margin),
      "recon_loss": jnp.mean(recon),
      "accuracy": jnp.mean(strict_correct(out.lengths, batch["labels"])),
  }
  return loss, metrics


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh ``('data',)`` over all devices (of all processes)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices, ("data",))


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
  """Places this process's slice of the global batch on the mesh.

  On one host the slice is the whole batch; on several, each process passes
  the rows it built (see ``MultiMNIST.batch(process_index=...)``).
  """
  sharding = NamedSharding(mesh, P("data"))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def make_train_step(model: CapsNet, tx: optax.GradientTransformation, mesh: Mesh,
                    recon_weight: float) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """``(state, global batch) -> (new state, metrics)``, jitted, state donated."""

  def local_grads(params, batch):
    # Each device differentiates its own copy of the parameters (its slice of
    # the batch), then the gradients are averaged explicitly: the pmap model.
    params = jax.lax.pcast(params, "data", to="varying")
    grads, metrics = jax.grad(loss_fn, has_aux=True)(params, model, batch, recon_weight)
    return jax.lax.pmean((grads, metrics), "data")

  grads_fn = jax.shard_map(local_grads, mesh=mesh, in_specs=(P(), P("data")),
                           out_specs=(P(), P()))

  def train_step(state: TrainState, batch: Batch):
    grads, metrics = grads_fn(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return TrainState(state.step + 1, params, opt_state), metrics

  replicated = NamedSharding(mesh, P())
  return jax.jit(train_step, donate_argnums=0, out_shardings=replicated)


def make_eval_step(model: CapsNet, mesh: Mesh) -> Callable[[Any, Batch], dict]:
  """``(params, batch with 'weight') -> sums`` of strict and per-digit hits.

  ``weight`` is 1 for real examples and 0 for the padding that fills the last
  batch, so every batch has the same shape (one compilation).
  """

  def local_sums(params, batch):
    out = model.apply({"params": params}, batch["image"])
    w = batch["weight"]
    sums = {
        "count": jnp.sum(w),
        "strict": jnp.sum(w * strict_correct(out.lengths, batch["labels"])),
        "per_digit": jnp.sum(w * per_digit_correct(out.lengths, batch["labels"])),
    }
    return jax.lax.psum(sums, "data")

  return jax.jit(jax.shard_map(local_sums, mesh=mesh, in_specs=(P(), P("data")),
                               out_specs=P()))
