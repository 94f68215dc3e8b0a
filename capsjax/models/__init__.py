"""Models: the :data:`MODELS` registry of named networks, and the networks.

  capsnet   CapsNet of Sabour, Frosst & Hinton (2017)    capsjax.models.capsnet

A new model is one module here that builds a Flax network from the layers
in :mod:`capsjax.layers` and registers a :class:`ModelSpec`.
"""
from capsjax.models.registry import MODELS, ModelSpec
from capsjax.models.capsnet import CapsNet, CapsNetOutput, capsule_loss

__all__ = ["MODELS", "ModelSpec", "CapsNet", "CapsNetOutput", "capsule_loss"]
