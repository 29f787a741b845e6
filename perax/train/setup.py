"""Assembles a run from its config: mesh, data, model, optimizer and the sharded train state.

Training (perax.train.loop) and evaluation (perax.train.evaluate) start from the same
:class:`RunSetup`, so an evaluation restores a checkpoint into exactly the structure that saved it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from perax.models import tiny
from perax.models.config import Qwen2AudioConfig
from perax.train import config as config_lib
from perax.train import data as data_lib
from perax.train import losses, optim
from perax.train import mesh as mesh_lib
from perax.train import model as model_lib
from perax.train import state as state_lib
from perax.train.checkpointing import Checkpointer

TINY_CHECKPOINT_DIRNAME = 'tiny_checkpoint'
CHECKPOINTS_DIRNAME = 'checkpoints'


@dataclasses.dataclass
class RunSetup:
  """Everything a run needs before its first step.

  Attributes:
    config: the run's config (ml_collections ConfigDict).
    workdir: the run's directory.
    mesh: the device mesh.
    run: tables, labels, level edges and prompt (perax.train.data.RunData).
    processor: the checkpoint's processor (tokenizer and chat template).
    model_config: the backbone's config.
    graphdef: the model's graph definition (static).
    state: the train state at step 0, placed on the mesh with ``shardings``.
    shardings: the train state's shardings.
    tx: the optimizer; schedule: its learning-rate schedule.
    adapted: LoRA-adapted layer paths (empty unless scope is 'lora').
  """

  config: Any
  workdir: str
  mesh: Mesh
  run: data_lib.RunData
  processor: Any
  model_config: Qwen2AudioConfig
  graphdef: nnx.GraphDef
  state: state_lib.TrainState
  shardings: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  adapted: list[str]

  def has_dev(self) -> bool:
    """Whether the config names a dev split with utterances (checkpoints are then ranked on it)."""
    return data_lib.has_split(self.run, self.config.data.dev_split)

  def checkpointer(self) -> Checkpointer:
    """The run's checkpoint manager, as the config asks (directory <workdir>/checkpoints)."""
    config = self.config
    ranked = bool(config.best_metric) and self.has_dev()
    return Checkpointer(
      os.path.join(self.workdir, CHECKPOINTS_DIRNAME),
      keep_last=config.keep_last,
      keep_best=config.keep_best,
      best_metric=config.best_metric if ranked else None,
      best_mode=config.best_mode,
      async_save=config.async_checkpointing,
    )

  def class_weights(self) -> np.ndarray | None:
    """[C] loss class weights from the training targets, or None (class_weight_power 0)."""
    power = self.config.class_weight_power
    if not power:
      return None
    targets = data_lib.split_targets(self.run, self.config.data.train_split)
    return losses.class_weights_from_targets(targets, power)


def checkpoint_path(config: Any, workdir: str) -> str:
  """The backbone checkpoint: ``config.model.checkpoint``, or for 'tiny' a tiny random one written
  into the workdir (once; the same seed gives the same files)."""
  if not config.model.checkpoint:
    raise ValueError(
      'config.model.checkpoint is empty: set it to a Qwen2-Audio checkpoint '
      f'directory, or to {config_lib.TINY_CHECKPOINT!r} for a tiny random model'
    )
  if config.model.checkpoint != config_lib.TINY_CHECKPOINT:
    return config.model.checkpoint
  path = os.path.join(workdir, TINY_CHECKPOINT_DIRNAME)
  if not os.path.isfile(os.path.join(path, 'config.json')):
    tiny.make_tiny_checkpoint(path, seed=config.seed)
  return path


def model_options(config: Any, num_classes: int) -> model_lib.ModelOptions:
  model = config.model
  return model_lib.ModelOptions(
    num_classes=num_classes,
    pooling=model.pooling,
    head=model.head,
    mlp_size=model.mlp_size,
    scope=model.scope,
    lora_targets=tuple(t for t in model.lora_targets.split(',') if t),
    lora_rank=model.lora_rank,
    lora_alpha=model.lora_alpha,
    seed=config.seed,
  )


def check_config(config: Any, mesh: Mesh) -> None:
  """Raises ValueError where the batch cannot be split over the mesh and the micro-batches."""
  shards = mesh_lib.batch_shards(mesh)
  if config.batch_size % shards:
    raise ValueError(
      f'batch_size {config.batch_size} is not a multiple of the {shards} batch '
      f'shards of mesh {dict(mesh.shape)}'
    )
  if (config.batch_size // shards) % config.num_microbatches:
    raise ValueError(
      f'{config.batch_size // shards} rows per device do not split into '
      f'{config.num_microbatches} micro-batches'
    )
  if config.checkpoint_every < 1 or config.total_steps < 1:
    raise ValueError('total_steps and checkpoint_every must be >= 1')
  if config.model.scope == 'full' and config.model.param_dtype != 'float32':
    raise ValueError(
      'full fine-tuning updates the backbone: it needs param_dtype float32 (master '
      f'weights), got {config.model.param_dtype!r}'
    )


def setup_run(config: Any, workdir: str, echo: Callable[[str], None] = print) -> RunSetup:
  """Builds the mesh, reads the data, loads the model and places a fresh train state.

  Args:
    config: the run's config (see configs/demo.py for its fields).
    workdir: the run's directory (created if needed).
    echo: receives progress lines.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = mesh_lib.make_mesh(config.mesh_shape)
  check_config(config, mesh)
  run = data_lib.load_run_data(config.data, workdir, config.seed, echo)
  model, model_config, processor, adapted = model_lib.build_model(
    checkpoint_path(config, workdir),
    model_options(config, len(run.labels)),
    compute_dtype=config.model.compute_dtype,
    param_dtype=config.model.param_dtype,
    attention_impl=config.model.attention_impl,
    mesh=mesh,
  )
  graphdef, params, frozen = state_lib.split_model(model, config.model.scope)
  tx, schedule = optim.make_optimizer(
    learning_rate=config.learning_rate,
    total_steps=config.total_steps,
    warmup_steps=config.warmup_steps,
    weight_decay=config.weight_decay,
    clip_norm=config.clip_norm,
    end_factor=config.end_lr_factor,
  )
  state = state_lib.create_train_state(params, frozen, tx)
  shardings = mesh_lib.state_shardings(state, mesh)
  state = jax.device_put(state, shardings)
  echo(
    f'mesh {dict(mesh.shape)}; scope {config.model.scope}: '
    f'{state_lib.count_parameters(state.params):,} trainable and '
    f'{state_lib.count_parameters(state.frozen):,} frozen parameters'
    + (f'; LoRA on {len(adapted)} layers' if adapted else '')
  )
  return RunSetup(
    config=config,
    workdir=workdir,
    mesh=mesh,
    run=run,
    processor=processor,
    model_config=model_config,
    graphdef=graphdef,
    state=state,
    shardings=shardings,
    tx=tx,
    schedule=schedule,
    adapted=adapted,
  )
