"""Routing algorithms and capsule non-linearities, as pure ``jax.numpy`` functions.

Routers of vector capsules share one calling convention::

  v, c = router(u_hat, num_iters, **options)

  u_hat  (..., n_in, n_out, d_out)  predictions of each child i for each parent j
  v      (..., n_out, d_out)        the parent capsules
  c      (..., n_in, n_out)         the coupling coefficients that produced them

``num_iters`` is a static Python int (routers of one pass, like
:func:`self_attention_routing`, ignore it);
``options`` are keyword-only and router specific (e.g. ``stop_gradient_inner``
of :func:`dynamic_routing`). Routers are plain functions: no Flax, no state,
usable under ``jit``, ``vmap`` and ``grad``.

:data:`ROUTERS` maps names to routers; layers take a router as a parameter and
``--routing NAME`` picks one. A new router is one function and one line::

  @ROUTERS.register("uniform")
  def uniform(u_hat, num_iters, **options):
    ...

Matrix capsules (poses and activations) have their own convention and
registry, :data:`MATRIX_ROUTERS` (see :mod:`capsjax.routing.em`)::

  poses, activations = router(votes, activations, beta_u, beta_a, num_iters, **options)
"""
from capsjax.registry import Registry
from capsjax.routing.attention import exp_squash, self_attention_routing
from capsjax.routing.dynamic import dynamic_routing, safe_norm, squash
from capsjax.routing.em import VARIANCE_FLOOR, em_routing, inverse_temperatures, window_softmax

__all__ = ["ROUTERS", "MATRIX_ROUTERS", "VARIANCE_FLOOR", "dynamic_routing", "em_routing", "exp_squash",
           "inverse_temperatures", "safe_norm", "self_attention_routing", "squash",
           "window_softmax"]

ROUTERS: Registry = Registry("router", "capsjax.routing.ROUTERS")
ROUTERS.register("dynamic", dynamic_routing)                 # Sabour et al. 2017
ROUTERS.register("self_attention", self_attention_routing)   # Mazzia et al. 2021

MATRIX_ROUTERS: Registry = Registry("matrix-capsule router", "capsjax.routing.MATRIX_ROUTERS")
MATRIX_ROUTERS.register("em", em_routing)                    # Hinton et al. 2018
