"""Capsule layers as thin Flax (Linen) modules over the pure core.

The pieces a researcher composes into their own network, by module:

``convolution``
  Conv           VALID convolution through :func:`capsjax.conv.conv2d`
  DepthwiseConv  VALID depthwise convolution through :func:`capsjax.conv.depthwise_conv2d`
``normalization``
  BatchNorm      per-channel batch normalisation, Keras' running statistics
``vector``
  PrimaryCaps    convolution -> squashed capsules   (B, H, W, C) -> (B, n, d)
  DenseCaps      fully connected capsules, routed   (B, n_in, d_in) -> v (B, n_out, d_out), c
``decoder``
  Decoder        masked class capsules -> image     (..., n_classes, d) -> (..., H, W, C)
  mask_capsules  class capsules masked by labels    (B, n_classes, d) -> (B, K, n_classes, d)
``matrix``: matrix capsules, a 4x4 pose (flattened to 16) and an activation per capsule
  PrimaryMatrixCaps  1x1 convolution -> poses, activations
                     (B, H, W, C) -> (B, H, W, T, 16), (B, H, W, T)
  ConvMatrixCaps     KxK window, stride, routed   -> (B, H', W', T', 16), (B, H', W', T')
  ClassMatrixCaps    shared over positions, coordinates added -> (B, classes, 16), (B, classes)

Everything is importable from here. ``DenseCaps`` takes its router as a
parameter (any function of the :mod:`capsjax.routing` convention); it never
imports one algorithm. The initialisers are the official code's; their
constants (``DIGIT_CAPS_INIT``, ``OFFICIAL_PRIMARY_CAPS_SCALE``, ``POSE_INIT``)
live beside their layers.
"""
from capsjax.layers.convolution import Conv, DepthwiseConv
# The type aliases of the layers' signatures.
from capsjax.layers.convolution import Dtype as Dtype, Initializer as Initializer, Router as Router
from capsjax.layers.decoder import Decoder, mask_capsules
from capsjax.layers.normalization import BatchNorm
from capsjax.layers.matrix import POSE_INIT, ClassMatrixCaps, ConvMatrixCaps, PrimaryMatrixCaps
from capsjax.layers.vector import (
    DIGIT_CAPS_INIT, OFFICIAL_PRIMARY_CAPS_SCALE, DenseCaps, PrimaryCaps)

__all__ = ["BatchNorm", "Conv", "DepthwiseConv", "PrimaryCaps", "DenseCaps", "Decoder",
           "mask_capsules", "PrimaryMatrixCaps", "ConvMatrixCaps", "ClassMatrixCaps", "DIGIT_CAPS_INIT",
           "OFFICIAL_PRIMARY_CAPS_SCALE", "POSE_INIT"]
