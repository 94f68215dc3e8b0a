"""capsjax: Capsule Networks with dynamic routing in JAX/Flax."""
from capsjax.losses import margin_loss, reconstruction_loss
from capsjax.models import CapsNet, CapsNetOutput
from capsjax.routing import dynamic_routing, safe_norm, squash

__version__ = "0.1.0"

__all__ = [
    "CapsNet", "CapsNetOutput", "dynamic_routing", "margin_loss",
    "reconstruction_loss", "safe_norm", "squash",
]
