"""Assembles a run from its config: mesh, data, model, optimizer and the sharded train state.

Training (perax.train.loop) and evaluation (perax.train.evaluate) start from the same
:class:`RunSetup`, so an evaluation restores a checkpoint into exactly the structure that saved it.
:func:`check_config` validates every field a run reads before anything is loaded, naming the field.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from perax.core import log, rendezvous
from perax.core.errors import InputError
from perax.models import sharding, tiny
from perax.models.config import Qwen2AudioConfig
from perax.train import config as config_lib
from perax.train import data as data_lib
from perax.train import head, losses, optim
from perax.train import mesh as mesh_lib
from perax.train import model as model_lib
from perax.train import state as state_lib
from perax.train.checkpointing import Checkpointer
from perax.train.config import TrainConfig

TINY_CHECKPOINT_DIRNAME = 'tiny_checkpoint'
CHECKPOINTS_DIRNAME = 'checkpoints'
DTYPES = ('float32', 'bfloat16', 'float16')
BEST_MODES = ('min', 'max')
BALANCES = ('classes', 'cells')
PADDING_SIDES = ('left', 'right')


@dataclasses.dataclass
class RunSetup:
  """Everything a run needs before its first step.

  Attributes:
    config: the run's config (perax.train.config.TrainConfig).
    workdir: the run's directory.
    mesh: the device mesh.
    run: tables, labels, level definition and prompt (perax.train.data.RunData).
    processor: the checkpoint's processor (tokenizer and chat template).
    model_config: the backbone's config.
    graphdef: the model's graph definition (static).
    state: the train state at step 0, placed on the mesh with ``shardings``.
    shardings: the train state's shardings.
    tx: the optimizer; schedule: its learning-rate schedule.
    adapted: LoRA-adapted layer paths (empty unless scope is 'lora').
  """

  config: TrainConfig
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


def checkpoint_path(config: TrainConfig, workdir: str) -> str:
  """The backbone checkpoint: ``config.model.checkpoint``, or for 'tiny' a tiny random one written
  into the workdir (once, by process 0; the same seed gives the same files)."""
  if not config.model.checkpoint:
    raise InputError(
      'config.model.checkpoint is empty: set it to a Qwen2-Audio checkpoint '
      f'directory, or to {config_lib.TINY_CHECKPOINT!r} for a tiny random model'
    )
  if config.model.checkpoint != config_lib.TINY_CHECKPOINT:
    return config.model.checkpoint
  path = os.path.join(workdir, TINY_CHECKPOINT_DIRNAME)

  def write_on_process_0() -> None:
    if jax.process_index() == 0 and not os.path.isfile(os.path.join(path, 'config.json')):
      tiny.make_tiny_checkpoint(path, seed=config.seed)

  # Every process waits for process 0's write (however long) and sees its error.
  rendezvous.run_everywhere('tiny checkpoint written', write_on_process_0)
  return path


def model_options(config: TrainConfig, num_classes: int) -> model_lib.ModelOptions:
  model = config.model
  return model_lib.ModelOptions(
    num_classes=num_classes,
    pooling=model.pooling,
    head=model.head,
    mlp_size=model.mlp_size,
    scope=model.scope,
    lora_targets=tuple(model.lora_targets),
    lora_rank=model.lora_rank,
    lora_alpha=model.lora_alpha,
    seed=config.seed,
  )


def _need(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise InputError(f'config.{field}: {message}')


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _strings(value: Any) -> bool:
  return isinstance(value, (tuple, list)) and all(isinstance(v, str) and v for v in value)


def check_config(config: TrainConfig, devices: list[jax.Device] | None = None) -> Mesh:
  """Validates the fields a run reads; raises InputError naming the first bad field.

  Checks types (mesh_shape a tuple of 3 ints, lora_targets a tuple of regexes, test_splits a tuple
  of names), choices (loss, scope, pooling, head, dtypes, balance, padding side, best mode) and how
  the batch splits over the mesh's batch shards and the micro-batches.

  Args:
    config: the run's config.
    devices: the devices the mesh spans (default: all of JAX's).

  Returns:
    The run's mesh.
  """
  shape = config.mesh_shape
  _need(
    isinstance(shape, (tuple, list)) and len(shape) == 3 and all(_is_int(s) for s in shape),
    'mesh_shape',
    f'needs a tuple of 3 ints (data, fsdp, tensor), e.g. (1, -1, 1); got {shape!r}',
  )
  try:
    mesh = sharding.make_mesh(*shape, devices=devices)
  except ValueError as error:
    raise InputError(f'config.mesh_shape: {error}') from None
  for field in ('total_steps', 'batch_size', 'num_microbatches', 'checkpoint_every', 'keep_last'):
    _need(_is_int(config[field]) and config[field] >= 1, field, f'must be an int >= 1, got {config[field]!r}')
  shards = int(np.prod([mesh.shape[a] for a in mesh_lib.BATCH_AXES]))
  _need(
    config.batch_size % shards == 0,
    'batch_size',
    f'{config.batch_size} is not a multiple of the {shards} batch shards of mesh {dict(mesh.shape)}',
  )
  _need(
    (config.batch_size // shards) % config.num_microbatches == 0,
    'num_microbatches',
    f'{config.batch_size // shards} rows per device do not split into {config.num_microbatches} micro-batches',
  )
  _need(config.loss in losses.LOSSES, 'loss', f'{config.loss!r} is not one of {sorted(losses.LOSSES)}')
  _need(config.best_mode in BEST_MODES, 'best_mode', f'{config.best_mode!r} is not one of {BEST_MODES}')
  model = config.model
  _need(model.scope in state_lib.SCOPES, 'model.scope', f'{model.scope!r} is not one of {state_lib.SCOPES}')
  _need(model.pooling in head.POOLINGS, 'model.pooling', f'{model.pooling!r} is not one of {head.POOLINGS}')
  _need(model.head in head.HEADS, 'model.head', f'{model.head!r} is not one of {head.HEADS}')
  for field in ('compute_dtype', 'param_dtype'):
    _need(model[field] in DTYPES, f'model.{field}', f'{model[field]!r} is not one of {DTYPES}')
  _need(
    _strings(model.lora_targets),
    'model.lora_targets',
    f"needs a tuple of module-path regexes, e.g. ('q_proj', 'v_proj'); got {model.lora_targets!r}",
  )
  for pattern in model.lora_targets:
    try:
      re.compile(pattern)
    except re.error as error:
      raise InputError(f'config.model.lora_targets: {pattern!r} is not a regex ({error})') from None
  _need(
    _is_int(model.lora_rank) and model.lora_rank >= 1,
    'model.lora_rank',
    f'must be >= 1, got {model.lora_rank!r}',
  )
  _need(
    model.scope != 'full' or model.param_dtype == 'float32',
    'model.param_dtype',
    f'full fine-tuning updates the backbone: it needs float32 (master weights), got {model.param_dtype!r}',
  )
  data = config.data
  _need(isinstance(data.train_split, str) and data.train_split, 'data.train_split', 'names no split')
  _need(
    _strings(data.test_splits), 'data.test_splits', f'needs a tuple of split names, got {data.test_splits!r}'
  )
  _need(
    isinstance(data.eval_set_dirs, (tuple, list)) and len(data.eval_set_dirs) in (0, len(data.test_splits)),
    'data.eval_set_dirs',
    f'needs one directory per test split {tuple(data.test_splits)}, got {data.eval_set_dirs!r}',
  )
  _need(
    not data.test_fold or len(data.test_splits) >= 1,
    'data.test_splits',
    'names no split for the test fold (data.test_fold) to become',
  )
  _need(data.balance in BALANCES, 'data.balance', f'{data.balance!r} is not one of {BALANCES}')
  _need(
    data.padding_side in PADDING_SIDES,
    'data.padding_side',
    f'{data.padding_side!r} is not one of {PADDING_SIDES}',
  )
  buckets = tuple(data.bucket_seconds)
  _need(
    bool(buckets) and all(_is_int(b) and b > 0 for b in buckets) and list(buckets) == sorted(set(buckets)),
    'data.bucket_seconds',
    f'needs ascending positive whole seconds, got {data.bucket_seconds!r}',
  )
  return mesh


def setup_run(config: TrainConfig, workdir: str) -> RunSetup:
  """Validates the config, builds the mesh, reads the data, loads the model and places a fresh state.

  Args:
    config: the run's config (perax/train/config.py documents its fields).
    workdir: the run's directory (created if needed).
  """
  mesh = check_config(config)
  os.makedirs(workdir, exist_ok=True)
  run = data_lib.load_run_data(config.data, workdir, config.seed)
  model, model_config, processor, adapted = model_lib.build_model(
    checkpoint_path(config, workdir),
    model_options(config, len(run.labels)),
    compute_dtype=config.model.compute_dtype,
    param_dtype=config.model.param_dtype,
    attention_impl=config.model.attention_impl,
    scan_layers=config.model.scan_layers,
    remat_policy=config.model.remat_policy,
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
  log.info(
    f'mesh {dict(mesh.shape)}; scope {config.model.scope}: '
    f'{state_lib.count_parameters(state.params):,} trainable and '
    f'{state_lib.count_parameters(state.frozen):,} frozen parameters'
    + (f'; LoRA on {len(adapted)} layers' if adapted else ''),
    stage='train',
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
