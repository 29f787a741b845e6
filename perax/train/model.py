"""Builds the model a run trains: Qwen2-Audio from a checkpoint, LoRA adapters if asked, the head.

Mixed precision: the backbone computes in ``compute_dtype`` (bfloat16 by default) from parameters
stored in ``param_dtype``: float32 master weights where the optimizer updates the backbone, or
bfloat16 to halve a frozen one; each layer casts its weights to the compute dtype as it uses them.
LoRA adapters and the head always keep float32 weights, and the head and the loss compute in float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from perax.models import loading
from perax.models.config import Qwen2AudioConfig
from perax.train import lora
from perax.train.head import DistributionalModel


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """How the distributional model is assembled.

  Attributes:
    num_classes: size of the label set C.
    pooling: 'last' or 'audio_mean' (perax.train.head.POOLINGS).
    head: 'linear' or 'mlp'.
    mlp_size: hidden width of an MLP head.
    scope: 'head', 'lora' or 'full' (perax.train.state.SCOPES).
    lora_targets: regexes of the layers to adapt (perax.train.lora.apply_lora), with scope 'lora'.
    lora_rank, lora_alpha: adapter rank and scaling numerator.
    seed: draws the head's and the adapters' initial weights.
  """

  num_classes: int
  pooling: str = 'last'
  head: str = 'linear'
  mlp_size: int = 256
  scope: str = 'head'
  lora_targets: Sequence[str] = ('q_proj', 'v_proj')
  lora_rank: int = 8
  lora_alpha: float = 16.0
  seed: int = 0


def dtype_from_name(name: str) -> Any:
  """'float32' / 'bfloat16' / 'float16' -> the jnp dtype."""
  try:
    return jnp.dtype(name)
  except TypeError as e:
    raise ValueError(f'unknown dtype {name!r}') from e


def wrap_backbone(
  backbone: nnx.Module, config: Qwen2AudioConfig, options: ModelOptions
) -> tuple[DistributionalModel, list[str]]:
  """Adds LoRA adapters (scope 'lora') and the head to ``backbone``.

  Returns:
    (the model, the paths of the adapted layers; empty unless scope is 'lora').
  """
  rngs = nnx.Rngs(options.seed)
  adapted = []
  if options.scope == 'lora':
    adapted = lora.apply_lora(
      backbone, options.lora_targets, rank=options.lora_rank, alpha=options.lora_alpha, rngs=rngs
    )
  model = DistributionalModel(
    backbone,
    config,
    options.num_classes,
    pooling=options.pooling,
    head=options.head,
    mlp_size=options.mlp_size,
    rngs=rngs,
  )
  return model, adapted


def build_model(
  checkpoint: str,
  options: ModelOptions,
  *,
  compute_dtype: str = 'bfloat16',
  param_dtype: str = 'float32',
  attention_impl: str = 'einsum',
  scan_layers: bool = True,
  remat_policy: str = 'none',
  mesh: Mesh | None = None,
) -> tuple[DistributionalModel, Qwen2AudioConfig, Any, list[str]]:
  """Loads the backbone from ``checkpoint`` (HF or perax-converted) and wraps it.

  Args:
    checkpoint: the checkpoint directory (perax.models.loading.load_model).
    options: head, pooling, trainable scope and LoRA settings.
    compute_dtype, param_dtype: the backbone's compute and storage dtypes.
    attention_impl: the backbone's attention implementation (perax.models.config.ATTENTION_IMPLS).
    scan_layers, remat_policy: how the backbone's layer stacks run (perax.models.layer_stack).
    mesh: where the backbone's weights are placed as they load (sharded by perax.models.sharding's
      rules), so a large model never sits whole on one device; None: the first device.

  Returns:
    (model, the backbone's config, the checkpoint's processor, the LoRA-adapted layer paths).
  """
  backbone, config, processor = loading.load_model(
    checkpoint,
    dtype=dtype_from_name(compute_dtype),
    param_dtype=dtype_from_name(param_dtype),
    attention_impl=attention_impl,
    scan_layers=scan_layers,
    remat_policy=remat_policy,
    mesh=mesh,
  )
  model, adapted = wrap_backbone(backbone, config, options)
  return model, config, processor, adapted
