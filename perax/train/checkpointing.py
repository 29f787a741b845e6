"""Orbax checkpoints of a run: train state, data-iterator position and config, kept by a policy.

One checkpoint per saved step, under ``<workdir>/checkpoints/<step>/``, holds three items
(``ocp.args.Composite``):

  state   the whole TrainState (step, trainable and frozen parameters, optimizer state);
  data    the Grain iterator's position (grain's own checkpoint handler), so a resumed run sees
          exactly the batches the uninterrupted run would have seen;
  config  the run's config as JSON.

Saves are asynchronous: ``save`` returns once the arrays are copied off the devices, and the files
are written in the background (``wait`` blocks until they are). Preservation keeps the last
``keep_last`` checkpoints plus the ``keep_best`` best by a dev metric (lower or higher is better).
Restoring takes the target shardings, so a checkpoint saved on one device restores onto any mesh.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

STATE = 'state'
DATA = 'data'
CONFIG = 'config'


class Checkpointer:
  """Saves and restores a run's checkpoints in one directory.

  Attributes:
    directory: where the step folders live.
    best_metric: the dev metric that ranks checkpoints, or None.
    manager: the underlying ``ocp.CheckpointManager``.
  """

  def __init__(
    self,
    directory: os.PathLike | str,
    *,
    keep_last: int = 2,
    keep_best: int = 1,
    best_metric: str | None = None,
    best_mode: str = 'min',
    async_save: bool = True,
  ):
    """Opens (or creates) the checkpoint directory.

    Args:
      directory: the checkpoint directory.
      keep_last: the most recent checkpoints to keep (at least 1).
      keep_best: the best checkpoints by ``best_metric`` to keep besides the recent ones.
      best_metric: a key of the metrics passed to ``save``; None keeps only the recent ones.
      best_mode: 'min' when lower is better (divergences), 'max' when higher is (accuracy).
      async_save: write files in the background.
    """
    if keep_last < 1:
      raise ValueError(f'keep_last must be >= 1, got {keep_last}')
    if best_mode not in ('min', 'max'):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.best_metric = best_metric
    self.best_mode = best_mode
    policies = [checkpoint_managers.LatestN(n=keep_last)]
    if best_metric is not None and keep_best > 0:
      policies.append(
        checkpoint_managers.BestN(
          # BestN keeps the last n of the sorted checkpoints: sort worst first.
          get_metric_fn=lambda metrics: metrics[best_metric],
          reverse=best_mode == 'min',
          n=keep_best,
          keep_checkpoints_without_metrics=False,
        )
      )
    # best_fn makes the manager write each step's metrics to disk and rank by them (best_step).
    options = ocp.CheckpointManagerOptions(
      best_fn=None if best_metric is None else lambda metrics: metrics[best_metric],
      best_mode=best_mode,
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
      enable_async_checkpointing=async_save,
      create=True,
    )
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_handlers={
        STATE: ocp.StandardCheckpointHandler(),
        DATA: grain.checkpoint.CheckpointHandler(),
        CONFIG: ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def best_step(self) -> int | None:
    """The kept step with the best ``best_metric`` (None without a metric or metrics)."""
    if self.best_metric is None:
      return None
    return self.manager.best_step()

  def save(
    self,
    step: int,
    state: Any,
    data_iterator: Any | None = None,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
  ) -> bool:
    """Starts saving ``state`` (and the iterator's position and the config) as ``step``.

    Returns:
      Whether a checkpoint was started (False when ``step`` is already saved).
    """
    if step in self.manager.all_steps():
      return False
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items[CONFIG] = ocp.args.JsonSave(dict(config))
    return self.manager.save(
      step, args=ocp.args.Composite(**items), metrics=None if metrics is None else dict(metrics)
    )

  def restore(
    self, step: int, abstract_state: Any, state_shardings: Any, data_iterator: Any | None = None
  ) -> Any:
    """The state saved at ``step``, placed with ``state_shardings``; moves ``data_iterator`` to the
    saved position.

    Args:
      step: a saved step.
      abstract_state: a pytree with the state's structure (arrays or ShapeDtypeStructs).
      state_shardings: the target shardings (any mesh), same structure.
      data_iterator: a Grain iterator to set to the saved position, or None.
    """
    target = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, state_shardings
    )
    items = {STATE: ocp.args.StandardRestore(target)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE]

  def restore_config(self, step: int) -> dict:
    """The config saved with ``step``."""
    return self.manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
