"""Load Qwen2-Audio from a perax-converted directory or straight from an HF directory.

  model, config, processor = load_model('/ckpt/qwen2-audio-perax', dtype=jnp.bfloat16)
  model, config, _ = load_model(path, mesh=make_mesh(fsdp=4, tensor=2), with_processor=False)

Every parameter lands directly in its target sharding: by default this process's first device; with ``mesh``,
the model's logical-axis rules over that mesh (perax.models.sharding); with ``shardings``, exactly
the Sharding given per parameter. A converted directory is restored by Orbax straight into those
shardings and the parameter dtype; an HF directory (config.json + safetensors) is converted on the
fly, tensor by tensor, each placed on its devices as soon as it is converted. The processor is
transformers' ``AutoProcessor`` read from the same directory (local files only, no remote code).
Before any weight is read, the tokenizer's ``<|AUDIO|>`` id is checked against config.json.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from perax.core.errors import InputError
from perax.models import convert, store, tokenizer_files
from perax.models import sharding as sharding_lib
from perax.models.config import Qwen2AudioConfig
from perax.models.qwen2_audio import Qwen2AudioForConditionalGeneration

# Per-parameter shardings: an nnx.State mirroring nnx.state(model) (e.g. from
# perax.models.sharding.parameter_shardings), or a mapping from dot-joined perax path.
Shardings = nnx.State | Mapping[str, Sharding]


def load_processor(path: os.PathLike | str) -> Any:
  """transformers' AutoProcessor (Qwen2AudioProcessor) from local files."""
  path = pathlib.Path(path)
  tokenizer_files.check_processor_files(path)
  return transformers.AutoProcessor.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)


def load_model(
  path: os.PathLike | str,
  dtype: jnp.dtype = jnp.float32,
  param_dtype: jnp.dtype | None = None,
  *,
  mesh: Mesh | None = None,
  rules: sharding_lib.Rules = sharding_lib.LOGICAL_AXIS_RULES,
  shardings: Shardings | None = None,
  attention_impl: str | None = None,
  scan_layers: bool | None = None,
  remat_policy: str | None = None,
  with_processor: bool = True,
) -> tuple[Qwen2AudioForConditionalGeneration, Qwen2AudioConfig, Any]:
  """Builds the model with its weights, each placed in its target sharding as it is read.

  Args:
    path: a directory written by :func:`perax.models.convert.convert_checkpoint` (has perax.json),
      or an HF checkpoint directory.
    dtype: compute dtype.
    param_dtype: parameter dtype; defaults to ``dtype``.
    mesh: place parameters sharded over this mesh by ``rules``; default: this process's first device.
    rules: logical-axis rules (perax.models.sharding).
    shardings: the Sharding of every parameter (see :data:`Shardings`); excludes ``mesh``. With tied
      embeddings there is no lm_head, and an entry for it is ignored.
    attention_impl: overrides the config's attention implementation
      (perax.models.config.ATTENTION_IMPLS); None keeps config.json's (default 'einsum').
    scan_layers: overrides whether the layer stacks run as a scan (perax.models.layer_stack);
      None keeps config.json's (default true). The weights are the same either way.
    remat_policy: overrides the layers' remat policy (perax.models.layer_stack.REMAT_POLICIES);
      None keeps config.json's (default 'none').
    with_processor: also load the processor (else None is returned in its place).

  Returns:
    (model, config, processor).

  Raises:
    InputError: not a checkpoint directory, an unfinished or corrupt conversion, weights that do not
      match the config, a tokenizer whose ``<|AUDIO|>`` id differs from config.json's, or
      ``shardings`` missing a parameter.
  """
  path = pathlib.Path(path)
  if mesh is not None and shardings is not None:
    raise ValueError('pass mesh or shardings, not both')
  # One spelling per dtype: jnp.float32 and np.dtype('float32') compare equal but hash apart, and
  # the dtype is part of the model's graphdef, so mixing them would miss jit caches.
  dtype = getattr(jnp, jnp.dtype(dtype).name)
  param_dtype = jnp.dtype(dtype if param_dtype is None else param_dtype)
  store.check_not_unfinished(path)
  _, config = convert.read_hf_config(path)
  config = config.with_overrides(
    attention_impl=attention_impl, scan_layers=scan_layers, remat_policy=remat_policy
  )
  tokenizer_files.check_audio_token(path, config)
  shardings_of = _shardings(config, mesh, rules) if shardings is None else _given(shardings)
  if store.is_converted(path):
    values = _restore_converted(path, config, param_dtype, shardings_of)
  else:
    config, values = convert.read_hf_weights(
      path, config, param_dtype, put=lambda name, array: jax.device_put(array, shardings_of(name))
    )
  model = _assemble(config, dtype, param_dtype, values)
  processor = load_processor(path) if with_processor else None
  return model, config, processor


def _shardings(config: Qwen2AudioConfig, mesh: Mesh | None, rules: sharding_lib.Rules):
  """perax path -> the Sharding its parameter is placed with (lm_head included, tied or not)."""
  if mesh is None:
    device = NamedSharding(Mesh(np.asarray(jax.local_devices()[:1]), ('replica',)), PartitionSpec())
    return lambda name: device
  untied = dataclasses.replace(config, tie_word_embeddings=False)
  return _given(sharding_lib.parameter_shardings(convert.abstract_model(untied), mesh, rules))


def _given(shardings: Shardings) -> Callable[[str], Sharding]:
  """perax path -> Sharding from an nnx.State of shardings or a flat mapping."""
  if isinstance(shardings, nnx.State):
    by_path = {name: variable.get_value() for name, variable in convert.flat_variables(shardings)}
  else:
    by_path = dict(shardings)

  def sharding_of(name: str) -> Sharding:
    if name not in by_path:
      raise InputError(f'no sharding given for parameter {name}', item=name)
    return by_path[name]

  return sharding_of


def _restore_converted(
  path: pathlib.Path, config: Qwen2AudioConfig, param_dtype, shardings_of
) -> dict[str, jax.Array]:
  """Restores a converted directory's state into ``param_dtype`` and the target shardings, after
  checking its parameter names and shapes against the config."""
  expected = {
    name: variable.shape
    for name, variable in convert.flat_variables(nnx.state(convert.abstract_model(config)))
  }
  stored = store.stored_arrays(path)
  state_dir = path / store.STATE_DIR
  missing = sorted(set(expected) - set(stored))
  unexpected = sorted(set(stored) - set(expected))
  if missing or unexpected:
    raise InputError(
      f'checkpoint does not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}',
      path=state_dir,
    )
  for name, shape in expected.items():
    if tuple(stored[name].shape) != tuple(shape):
      raise InputError(
        f'parameter {name} has shape {list(stored[name].shape)}, expected {list(shape)} from config.json',
        path=state_dir,
        item=name,
      )
  target = {
    name: jax.ShapeDtypeStruct(shape, param_dtype, sharding=shardings_of(name))
    for name, shape in expected.items()
  }
  return store.restore(path, target)


def _assemble(
  config: Qwen2AudioConfig, dtype, param_dtype, values: dict[str, Any]
) -> Qwen2AudioForConditionalGeneration:
  """The model whose variables hold ``values`` (keyed by dot-joined perax path)."""
  graphdef, abstract_state = nnx.split(convert.abstract_model(config, dtype, param_dtype))
  flat = [
    (path, variable.replace(values['.'.join(str(part) for part in path)]))
    for path, variable in nnx.to_flat_state(abstract_state)
  ]
  return nnx.merge(graphdef, nnx.from_flat_state(flat))
