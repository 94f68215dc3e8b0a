"""Models: the :data:`MODELS` registry of named networks, and the networks.

  capsnet            CapsNet of Sabour, Frosst & Hinton (2017)         capsjax.models.capsnet
  efficient_capsnet  Efficient-CapsNet of Mazzia et al. (2021)         capsjax.models.efficient_capsnet
  matrix_capsnet     matrix capsules, EM routing, Hinton et al. (2018)  capsjax.models.matrix_capsnet
  baseline_cnn       the CNN baselines of Sabour et al. (2017)          capsjax.models.baseline_cnn

Trained models are named in :data:`PRETRAINED`; ``pretrained(name)`` returns
one's module and variables (:mod:`capsjax.models.pretrained`).

A new model is one module here that builds a Flax network from the layers
in :mod:`capsjax.layers` and registers a :class:`ModelSpec`.
"""
from capsjax.models.registry import MODELS, ModelSpec, router_of
from capsjax.models.capsnet import CapsNet, CapsNetOutput, capsule_loss
from capsjax.models.efficient_capsnet import EfficientCapsNet
from capsjax.models.matrix_capsnet import MatrixCapsNet, MatrixCapsOutput, matrix_capsule_loss
from capsjax.models.baseline_cnn import BASELINES, BaselineCNN, ClassifierOutput, classifier_loss
from capsjax.models.pretrained import PRETRAINED, PretrainedFileError, PretrainedModel, pretrained

__all__ = ["MODELS", "ModelSpec", "router_of", "CapsNet", "CapsNetOutput", "EfficientCapsNet",
           "MatrixCapsNet", "MatrixCapsOutput", "capsule_loss", "matrix_capsule_loss",
           "BASELINES", "BaselineCNN", "ClassifierOutput", "classifier_loss",
           "PRETRAINED", "PretrainedFileError", "PretrainedModel", "pretrained"]
