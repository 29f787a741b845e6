"""Load Qwen2-Audio from a perax-converted directory or straight from an HF directory.

  model, config, processor = load_model('/ckpt/qwen2-audio-perax', dtype=jnp.bfloat16)

An HF directory (config.json + safetensors) is converted on the fly, tensor by tensor, each placed
on its devices as soon as it is converted. The processor is transformers' ``AutoProcessor`` read
from the same directory (local files only, no remote code).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import transformers
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from perax.core.errors import InputError
from perax.models import convert
from perax.models import sharding as sharding_lib
from perax.models.config import Qwen2AudioConfig
from perax.models.qwen2_audio import Qwen2AudioForConditionalGeneration


def load_processor(path: os.PathLike | str) -> Any:
  """transformers' AutoProcessor (Qwen2AudioProcessor) from local files."""
  path = pathlib.Path(path)
  if not (path / 'tokenizer_config.json').is_file():
    raise InputError('no tokenizer_config.json: the directory has no processor files', path=path)
  return transformers.AutoProcessor.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)


def load_model(
  path: os.PathLike | str,
  dtype: jnp.dtype = jnp.float32,
  param_dtype: jnp.dtype | None = None,
  *,
  mesh: Mesh | None = None,
  rules: sharding_lib.Rules = sharding_lib.LOGICAL_AXIS_RULES,
  attention_impl: str | None = None,
  with_processor: bool = True,
) -> tuple[Qwen2AudioForConditionalGeneration, Qwen2AudioConfig, Any]:
  """Builds the model with its weights.

  Args:
    path: a directory written by :func:`perax.models.convert.convert_checkpoint` (has perax.json),
      or an HF checkpoint directory.
    dtype: compute dtype.
    param_dtype: parameter dtype; defaults to ``dtype``.
    mesh: place parameters sharded over this mesh by ``rules``; default: the first device.
    rules: logical-axis rules (perax.models.sharding).
    attention_impl: overrides the config's attention implementation
      (perax.models.config.ATTENTION_IMPLS); None keeps config.json's (default 'einsum').
    with_processor: also load the processor (else None is returned in its place).

  Returns:
    (model, config, processor).

  Raises:
    InputError: not a checkpoint directory, or its weights do not match its config.
  """
  path = pathlib.Path(path)
  # One spelling per dtype: jnp.float32 and np.dtype('float32') compare equal but hash apart, and
  # the dtype is part of the model's graphdef, so mixing them would miss jit caches.
  dtype = getattr(jnp, jnp.dtype(dtype).name)
  param_dtype = jnp.dtype(dtype if param_dtype is None else param_dtype)
  _, config = convert.read_hf_config(path)
  if attention_impl is not None:
    config = dataclasses.replace(config, attention_impl=attention_impl)
  shardings_of = _shardings(config, mesh, rules)
  if (path / convert.PERAX_JSON).is_file():
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
    device = NamedSharding(Mesh(np.asarray(jax.devices()[:1]), ('replica',)), PartitionSpec())
    return lambda name: device
  untied = dataclasses.replace(config, tie_word_embeddings=False)
  by_path = {
    name: variable.get_value()
    for name, variable in convert.flat_variables(
      sharding_lib.parameter_shardings(convert.abstract_model(untied), mesh, rules)
    )
  }
  return by_path.__getitem__


def _restore_converted(
  path: pathlib.Path, config: Qwen2AudioConfig, param_dtype, shardings_of
) -> dict[str, jax.Array]:
  """Reads the Orbax state of a converted directory, checking it against the config."""
  stored_dtype = jnp.dtype(json.loads((path / convert.PERAX_JSON).read_text())['dtype'])
  expected = {
    name: variable.shape
    for name, variable in convert.flat_variables(
      nnx.state(convert.abstract_model(config, stored_dtype, stored_dtype))
    )
  }
  state_dir = (path / convert.STATE_DIR).absolute()  # Orbax takes absolute paths only
  with ocp.StandardCheckpointer() as checkpointer:
    stored = convert.flatten(checkpointer.metadata(state_dir).item_metadata.tree)
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
    target = convert.nest(
      {
        name: jax.ShapeDtypeStruct(shape, stored_dtype, sharding=shardings_of(name))
        for name, shape in expected.items()
      }
    )
    restored = convert.flatten(checkpointer.restore(state_dir, target))
  return {name: value.astype(param_dtype) for name, value in restored.items()}


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
