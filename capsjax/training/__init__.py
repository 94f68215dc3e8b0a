"""Training: config, data-parallel steps, checkpoints, logs and the loop."""
from capsjax.training.checkpoint import CheckpointError, Checkpointer
from capsjax.training.config import ConfigError, TrainConfig
from capsjax.training.loop import (
    NonFiniteLossError, evaluate_model, evaluate_workdir, train_and_evaluate)
from capsjax.training.steps import (
    TrainState, init_state, loss_fn, make_eval_step, make_mesh, make_model, make_optimizer,
    make_schedule, make_train_step, shard_batch, variables_of)

__all__ = [
    "CheckpointError", "Checkpointer", "ConfigError", "NonFiniteLossError", "TrainConfig",
    "TrainState", "evaluate_model", "evaluate_workdir", "init_state", "loss_fn", "make_eval_step", "make_mesh",
    "make_model", "make_optimizer", "make_schedule", "make_train_step", "shard_batch",
    "train_and_evaluate", "variables_of",
]
