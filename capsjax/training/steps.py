"""Train state, loss, and the jitted data-parallel train and eval steps.

One train-step function serves one CPU, one GPU and every device of a pod: it
is ``jax.jit`` over a ``jax.sharding.Mesh`` of all devices with a single
``data`` axis. Inside ``jax.shard_map`` each device computes the gradient of
its slice of the global batch and ``lax.pmean`` averages them (the pmap model
on the current API), and the model's own state (e.g. BatchNorm's
``batch_stats``) likewise; the optimizer update runs replicated. The state
buffers are donated.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from capsjax.metrics import per_digit_correct, strict_correct
from capsjax.mesh import DATA_AXIS, make_mesh, shard_batch
from capsjax.training.config import TrainConfig

__all__ = [
    "TrainState", "training_key", "make_model", "make_schedule", "make_optimizer", "init_state", "loss_fn",
    "make_mesh", "make_train_step", "make_eval_step", "shard_batch", "variables_of", "STEP_LIMIT",
]

# The step counter is int32: the most optimizer steps a run can take.
STEP_LIMIT = 2**31 - 1

Batch = dict[str, Any]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. The data needs no state: batch
  ``step`` is a pure function of ``(seed, step)``.

  ``model_state`` holds the model's variable collections besides ``params``
  (``{"batch_stats": ...}`` for BatchNorm; ``{}`` for CapsNet).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any


def variables_of(state: TrainState) -> dict[str, Any]:
  """The Flax variables of ``state``: ``{"params": ..., **model_state}``."""
  return {"params": state.params, **state.model_state}


def make_model(config: TrainConfig) -> nn.Module:
  """The network ``config.model`` names, built for ``config.dataset``."""
  return config.model_spec.build(config, config.data)


def make_schedule(config: TrainConfig) -> optax.Schedule:
  """The official learning rate: ``lr * rate^(step / decay_steps)`` (the exponent
  rounded down with ``lr_staircase``), floored at ``lr_min``."""
  return optax.exponential_decay(
      init_value=config.lr, transition_steps=config.decay_steps,
      decay_rate=config.lr_decay_rate, end_value=config.lr_min,
      staircase=config.lr_staircase)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """Adam on :func:`make_schedule`, with ``config.adam_eps``."""
  return optax.adam(make_schedule(config), eps=config.adam_eps)


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               image_shape: tuple[int, int, int], seed: int) -> TrainState:
  """Initial state for images of ``image_shape`` ``(H, W, C)``, from ``seed``."""
  images = jnp.zeros((1, *image_shape), jnp.float32)
  variables = dict(jax.jit(model.init)(jax.random.key(seed), images))
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    model_state=variables)


def training_key(seed: int, step, device=0) -> jax.Array:
  """The PRNG key of a model's random layers (dropout) at optimizer ``step`` on
  data-parallel ``device``: a pure function of them, so a resumed run draws
  the same masks."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), device)


def loss_fn(params, model_state, model: nn.Module, batch: Batch, config: TrainConfig,
            step=0, key: jax.Array | None = None):
  """The model's loss (its :class:`capsjax.models.ModelSpec`) at optimizer ``step``, batch mean.

  ``key`` feeds the model's PRNG streams (``spec.rngs``); None:
  :func:`training_key` of the seed and ``step`` on device 0.
  Returns ``(loss, (metrics, new model_state))``.
  """
  spec = config.model_spec
  variables = {"params": params, **model_state}
  if key is None:
    key = training_key(config.seed, step)
  rngs = dict(zip(spec.rngs, jax.random.split(key, len(spec.rngs)))) if spec.rngs else None
  if spec.collections:
    out, new_state = model.apply(variables, batch["image"], batch["labels"], train=True,
                                 mutable=list(spec.collections), rngs=rngs)
  else:
    out, new_state = model.apply(variables, batch["image"], batch["labels"], train=True,
                                 rngs=rngs), {}
  per_example, terms = spec.loss(out, batch, config, step)
  loss = jnp.mean(per_example)
  metrics = {"loss": loss, **{k: jnp.mean(v) for k, v in terms.items()},
             "accuracy": jnp.mean(strict_correct(out.scores, batch["labels"]))}
  return loss, (metrics, new_state)


def _all_finite(tree) -> jax.Array:
  """1.0 if every entry of every leaf of ``tree`` is finite (also for no leaves), else 0.0."""
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] + [True])
                 ).astype(jnp.float32)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                    config: TrainConfig, steps_per_call: int = 1
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """``(state, global batch) -> (new state, metrics)``, jitted, state donated.

  With ``steps_per_call = k > 1`` it takes a block of ``k`` consecutive global
  batches (every array with a leading axis ``k``, see :func:`shard_batch`) and
  runs the ``k`` steps in one ``lax.scan`` on the device: one dispatch instead
  of ``k``, the same result as ``k`` calls of the single step. Its metrics have
  the leading axis ``k``.
  """
  if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int) or steps_per_call < 1:
    raise ValueError(f"steps_per_call must be an int >= 1, got {steps_per_call!r}.")

  def local_grads(params, model_state, batch, step):
    # Each device differentiates its own copy of the parameters (its slice of
    # the batch), then the gradients are averaged explicitly: the pmap model.
    params = jax.lax.pcast(params, DATA_AXIS, to="varying")
    key = training_key(config.seed, step, jax.lax.axis_index(DATA_AXIS))
    grads, (metrics, new_state) = jax.grad(loss_fn, has_aux=True)(
        params, model_state, model, batch, config, step, key)
    return jax.lax.pmean((grads, metrics, new_state), DATA_AXIS)

  grads_fn = jax.shard_map(local_grads, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS), P()),
                           out_specs=(P(), P(), P()))

  def train_step(state: TrainState, batch: Batch):
    grads, metrics, model_state = grads_fn(state.params, state.model_state, batch, state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    # Whether the new parameters and model state are all finite: the loss of
    # this step was computed from the old ones, so only this says the new
    # state is good.
    metrics["params_finite"] = _all_finite(params)
    metrics["model_state_finite"] = _all_finite(model_state)
    return TrainState(state.step + 1, params, opt_state, model_state), metrics

  replicated = NamedSharding(mesh, P())
  if steps_per_call == 1:
    return jax.jit(train_step, donate_argnums=0, out_shardings=replicated)

  def train_steps(state: TrainState, block: Batch):
    return jax.lax.scan(train_step, state, block, length=steps_per_call)

  return jax.jit(train_steps, donate_argnums=0, out_shardings=replicated)


def make_eval_step(model: nn.Module, mesh: Mesh) -> Callable[[Any, Batch], dict]:
  """``(variables, batch with 'weight') -> sums`` of strict and per-digit hits.

  ``weight`` is 1 for real examples and 0 for the padding that fills the last
  batch, so every batch has the same shape (one compilation).
  """

  def local_sums(variables, batch):
    out = model.apply(variables, batch["image"], train=False)
    w = batch["weight"]
    sums = {
        "count": jnp.sum(w),
        "strict": jnp.sum(w * strict_correct(out.scores, batch["labels"])),
        "per_digit": jnp.sum(w * per_digit_correct(out.scores, batch["labels"])),
    }
    return jax.lax.psum(sums, DATA_AXIS)

  return jax.jit(jax.shard_map(local_sums, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                               out_specs=P()))
