"""Hugging Face Qwen2-Audio checkpoints -> perax parameters, parameter by parameter.

Weights are read with ``safetensors.safe_open(framework='numpy')`` from ``model.safetensors`` or the
shards listed in ``model.safetensors.index.json``: no torch, no pickles, no remote code. A plan
(:func:`plan_conversion`) first checks every tensor's name and shape from the file headers alone;
then each parameter is built and handed on before the next: each of its tensors is read (its file
opened for it alone, so no mapping of the input stays resident), transformed and cast to the target
dtype in one step. A stacked layer parameter (perax.models.layer_stack) is filled layer by layer, so
the largest thing held is one stacked parameter (7B bf16: the 2.9 GB stack of gate_proj kernels).
A truncated or garbage safetensors file is an InputError naming it.

Names go through one table, perax.models.names.RULES (re-exported here with its helpers).

The converted directory (:func:`convert_checkpoint`, format in perax.models.store) holds:

- ``state/``: an Orbax checkpoint of a nested dict of arrays keyed by perax parameter path, written
  by streaming (at most about 1.5x the output size of memory above the converter's baseline);
- ``config.json``: the HF config, with ``tie_word_embeddings`` set to what the weights say;
- the tokenizer and processor files copied from the HF directory (:data:`PROCESSOR_FILES`), which
  must be present (perax.models.tokenizer_files);
- ``perax.json``: format and perax versions, parameter dtype, source directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import pathlib
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

from perax.core import jsonio
from perax.core.errors import InputError
from perax.core.progress import Progress
from perax.models import layer_stack, store, tokenizer_files
from perax.models.config import Qwen2AudioConfig
from perax.models.names import (  # noqa: F401 (re-exported: the name table's public API)
  CONV1D,
  COPY,
  EMBED_TOKENS,
  FLAT,
  LEGACY_PREFIXES,
  LINEAR,
  LINEAR_FROM_HEADS,
  LM_HEAD,
  RULES,
  Transform,
  canonical_name,
  hf_name,
  hf_shape,
  layer_path,
  perax_path,
  stacked_slot,
)
from perax.models.qwen2_audio import Qwen2AudioForConditionalGeneration
from perax.models.store import FORMAT, FORMAT_VERSION, PERAX_JSON, STATE_DIR, flatten, nest  # noqa: F401

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
# Tokenizer, processor and generation files copied next to the converted weights, where present.
PROCESSOR_FILES = (
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'vocab.json',
  'merges.txt',
  'preprocessor_config.json',
  'processor_config.json',
  'generation_config.json',
  'chat_template.json',
  'chat_template.jinja',
)


def read_hf_config(hf_dir: os.PathLike | str) -> tuple[dict, Qwen2AudioConfig]:
  """The raw ``config.json`` dict and the parsed config of an HF checkpoint directory."""
  path = pathlib.Path(hf_dir) / 'config.json'
  if not path.is_file():
    raise InputError('config.json not found', path=path)
  try:
    raw = json.loads(path.read_text(encoding='utf-8'))
  except json.JSONDecodeError as error:
    raise InputError(f'invalid JSON: {error.msg}', path=path, line=error.lineno) from error
  except (OSError, UnicodeDecodeError) as error:
    raise InputError(f'unreadable ({error})', path=path) from None
  if not isinstance(raw, dict):
    raise InputError(f'expected a JSON object, got {type(raw).__name__}', path=path)
  return raw, Qwen2AudioConfig.from_hf_dict(raw, path=path)


@contextlib.contextmanager
def open_safetensors(file: os.PathLike | str):
  """``safe_open(file, framework='numpy')`` whose failures (truncated, garbage, unreadable file) are
  an InputError naming the file."""
  try:
    with safe_open(str(file), framework='numpy') as reader:
      yield reader
  except (SafetensorError, OSError) as error:
    raise InputError(
      f'not a readable safetensors file ({error}); it may be truncated or corrupt', path=file
    ) from None


def tensor_files(hf_dir: os.PathLike | str) -> dict[str, pathlib.Path]:
  """HF tensor name -> the safetensors file holding it (single file or sharded with an index)."""
  directory = pathlib.Path(hf_dir)
  index_path = directory / INDEX_FILE
  if index_path.is_file():
    try:
      weight_map = json.loads(index_path.read_text(encoding='utf-8'))['weight_map']
      files = {name: directory / filename for name, filename in weight_map.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
      raise InputError(f'not a safetensors index with a weight_map ({error})', path=index_path) from None
    for name, path in files.items():
      if not path.is_file():
        raise InputError(
          f'shard {path.name} listed for tensor {name!r} does not exist', path=index_path, item=name
        )
    return files
  single = directory / SINGLE_FILE
  if not single.is_file():
    raise InputError(f'neither {SINGLE_FILE} nor {INDEX_FILE} found', path=directory)
  with open_safetensors(single) as reader:
    return {name: single for name in reader.keys()}


# Rows compared at a time when deciding tying, so two vocabulary-sized matrices are never whole.
_TYING_ROWS = 4096


def _decide_tying(config: Qwen2AudioConfig, files: Mapping[str, pathlib.Path]) -> bool:
  """Whether lm_head shares embed_tokens: the config asks for it and the checkpoint either has no
  lm_head or one identical to embed_tokens (HF keeps a separate lm_head for Qwen2-Audio, so a
  present, different lm_head always wins)."""
  if not config.tie_word_embeddings:
    return False
  by_canonical = {canonical_name(name): name for name in files}
  if LM_HEAD not in by_canonical:
    return True
  if EMBED_TOKENS not in by_canonical:
    return False
  head, embed = by_canonical[LM_HEAD], by_canonical[EMBED_TOKENS]
  with open_safetensors(files[head]) as head_reader, open_safetensors(files[embed]) as embed_reader:
    head_slice, embed_slice = head_reader.get_slice(head), embed_reader.get_slice(embed)
    shape = tuple(head_slice.get_shape())
    if shape != tuple(embed_slice.get_shape()):
      return False
    rows = shape[0] if shape else 0
    for start in range(0, rows, _TYING_ROWS):
      block = slice(start, min(start + _TYING_ROWS, rows))
      if not np.array_equal(head_slice[block], embed_slice[block]):
        return False
  return True


def abstract_model(
  config: Qwen2AudioConfig, dtype=jnp.float32, param_dtype=None
) -> Qwen2AudioForConditionalGeneration:
  """The model with ShapeDtypeStruct leaves (no memory, no random init)."""
  return nnx.eval_shape(
    lambda: Qwen2AudioForConditionalGeneration(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
  )


@dataclasses.dataclass(frozen=True)
class PlannedTensor:
  """One HF tensor and the perax parameter (or layer slice of a stacked one) it becomes.

  Attributes:
    file: the safetensors file holding it.
    name: its HF name.
    path: the per-layer perax path (perax.models.names.RULES).
    transform: how it is converted.
    shape: the converted shape (one layer's, for a stacked parameter).
  """

  file: pathlib.Path
  name: str
  path: str
  transform: Transform
  shape: tuple[int, ...]

  def read(self, dtype) -> np.ndarray:
    """The converted tensor, ``shape`` in ``dtype`` (the file is opened for this tensor alone)."""
    with open_safetensors(self.file) as reader:
      return self.transform.apply(reader.get_tensor(self.name), self.shape, dtype)


@dataclasses.dataclass(frozen=True)
class PlannedParameter:
  """One perax parameter and the HF tensors it is built from.

  Attributes:
    path: its path in ``nnx.state(model)``, dot-joined.
    shape: its shape; a stacked layer parameter's is ``[layers, *one layer's shape]``.
    tensors: the HF tensor(s): one, or one per layer in layer order for a stacked parameter.
    stacked: whether ``tensors`` fill the leading layer axis.
  """

  path: str
  shape: tuple[int, ...]
  tensors: tuple[PlannedTensor, ...]
  stacked: bool

  def read(self, dtype) -> np.ndarray:
    """The parameter in ``dtype``; a stacked one is filled layer by layer (one HF tensor at a time)."""
    if not self.stacked:
      return self.tensors[0].read(dtype)
    out = np.empty(self.shape, dtype)
    for index, tensor in enumerate(self.tensors):
      out[index] = tensor.read(dtype)
    return out


def plan_conversion(
  hf_dir: os.PathLike | str, config: Qwen2AudioConfig
) -> tuple[Qwen2AudioConfig, list[PlannedParameter]]:
  """Checks every tensor of an HF checkpoint from the file headers, reading no tensor data
  (except lm_head and embed_tokens when deciding tying).

  Returns:
    (config with tie_word_embeddings as the weights decide, one entry per perax parameter in the
    model's state order; a stacked layer parameter gathers its layers' tensors).

  Raises:
    InputError: an unreadable file, a tensor no rule maps (unexpected), one that maps twice, one
      whose shape differs from what the config implies (mis-shaped), or parameters no tensor
      provides (missing); each names the tensor and the file.
  """
  files = tensor_files(hf_dir)
  config = dataclasses.replace(config, tie_word_embeddings=_decide_tying(config, files))
  expected = _expected_parameters(config)
  plan: dict[str, PlannedTensor] = {}
  for file, names in _group_by_file(files):
    with open_safetensors(file) as reader:
      available = set(reader.keys())
      for name in names:
        if name not in available:
          raise InputError(
            f'tensor {name!r} is listed in the index but absent from the file', path=file, item=name
          )
        if config.tie_word_embeddings and canonical_name(name) == LM_HEAD:
          continue  # identical to embed_tokens (see _decide_tying), which the tied model reads
        target = perax_path(name)
        if target is None:
          raise InputError(
            f'unexpected tensor {name!r}: no perax parameter corresponds to it', path=file, item=name
          )
        path, transform = target
        shape = _tensor_shape(path, expected)
        if shape is None:
          raise InputError(
            f'unexpected tensor {name!r}: the config has no parameter {path}', path=file, item=name
          )
        if path in plan:
          raise InputError(
            f'tensor {name!r} duplicates {plan[path].name!r} (both map to {path})', path=file, item=name
          )
        want = transform.hf_shape(shape)
        got = tuple(reader.get_slice(name).get_shape())
        if got != want:
          raise InputError(
            f'tensor {name!r} has shape {list(got)}, expected {list(want)} '
            f'from config.json (perax {path} {list(shape)}, '
            f'{transform.name})',
            path=file,
            item=name,
          )
        plan[path] = PlannedTensor(file, name, path, transform, shape)
  missing = [path for parameter in expected.values() for path in parameter.tensor_paths if path not in plan]
  if missing:
    shown = ', '.join(
      f'{hf_name(path)} {list(hf_shape(path, _tensor_shape(path, expected)))}' for path in missing[:5]
    )
    more = f' and {len(missing) - 5} more' if len(missing) > 5 else ''
    raise InputError(f'missing {len(missing)} tensors: {shown}{more}', path=hf_dir)
  return config, [
    PlannedParameter(
      path=parameter.path,
      shape=parameter.shape,
      tensors=tuple(plan[path] for path in parameter.tensor_paths),
      stacked=parameter.stacked,
    )
    for parameter in expected.values()
  ]


@dataclasses.dataclass(frozen=True)
class _Expected:
  """A parameter of the model the config describes: path, shape, and the per-layer paths
  (perax.models.names.RULES) that provide it (one per layer when stacked)."""

  path: str
  shape: tuple[int, ...]
  stacked: bool

  @property
  def tensor_paths(self) -> list[str]:
    if not self.stacked:
      return [self.path]
    return [layer_path(self.path, index) for index in range(self.shape[0])]


def _expected_parameters(config: Qwen2AudioConfig) -> dict[str, _Expected]:
  """Every parameter of ``config``'s model, in state order; stacked ones carry the 'layers' axis."""
  expected = {}
  for path, variable in flat_variables(nnx.state(abstract_model(config))):
    axes = tuple(variable.get_metadata().get('logical_axes') or ())
    expected[path] = _Expected(path, tuple(variable.shape), axes[:1] == (layer_stack.LAYERS_AXIS,))
  return expected


def _tensor_shape(path: str, expected: Mapping[str, _Expected]) -> tuple[int, ...] | None:
  """The shape one HF tensor converts to for per-layer ``path``, or None if the model has no such
  parameter (or layer)."""
  stacked_path, index = stacked_slot(path)
  parameter = expected.get(stacked_path)
  if parameter is None or parameter.stacked != (index is not None):
    return None
  if index is None:
    return parameter.shape
  return parameter.shape[1:] if index < parameter.shape[0] else None


def read_hf_weights(
  hf_dir: os.PathLike | str,
  config: Qwen2AudioConfig,
  param_dtype,
  put: Callable[[str, np.ndarray], Any] = lambda path, array: array,
  progress: bool = False,
) -> tuple[Qwen2AudioConfig, dict[str, Any]]:
  """Reads, checks and converts every tensor of an HF checkpoint (see :func:`plan_conversion`).

  Args:
    hf_dir: the HF checkpoint directory.
    config: its parsed config.
    param_dtype: dtype every parameter is cast to as it is read.
    put: called once per converted parameter (perax path, numpy array); its result is stored
      (identity by default; e.g. ``jax.device_put`` to move each tensor to devices as it comes).
    progress: log progress lines with rate and ETA.

  Returns:
    (config with tie_word_embeddings as the weights decide, {perax path: put(...)}).
  """
  config, plan = plan_conversion(hf_dir, config)
  meter = Progress(total=len(plan), unit='parameters', what='convert') if progress else None
  values = {}
  for entry in plan:
    values[entry.path] = put(entry.path, entry.read(param_dtype))
    if meter:
      meter.update()
  if meter:
    meter.close()
  return config, values


def flat_variables(state: nnx.State) -> Iterator[tuple[str, Any]]:
  """(dot-joined perax path, variable) for every variable of an nnx state."""
  for path, variable in nnx.to_flat_state(state):
    yield '.'.join(str(part) for part in path), variable


def _group_by_file(files: Mapping[str, pathlib.Path]) -> list[tuple[pathlib.Path, list[str]]]:
  grouped: dict[pathlib.Path, list[str]] = {}
  for name, file in files.items():
    grouped.setdefault(file, []).append(name)
  return sorted(grouped.items())


def convert_checkpoint(
  hf_dir: os.PathLike | str,
  out_dir: os.PathLike | str,
  dtype: str = 'float32',
  progress: bool = True,
  *,
  overwrite: bool = False,
  chunk_bytes: int | None = None,
) -> pathlib.Path:
  """Converts an HF Qwen2-Audio directory into a perax checkpoint directory, parameter by parameter.

  Everything is checked before anything is written: config.json, the tokenizer and processor files
  (all present, ``<|AUDIO|>`` id equal to audio_token_index), every tensor's name and shape.

  Args:
    hf_dir: HF checkpoint (config.json, safetensors, tokenizer and processor files).
    out_dir: the directory to write: missing or empty, or replaced with ``overwrite`` (see
      perax.models.store.write: locked while written; a failed conversion leaves it as it was).
    dtype: stored parameter dtype, a jnp dtype name ('float32', 'bfloat16').
    progress: log progress with rate and ETA.
    overwrite: replace a non-empty ``out_dir``.
    chunk_bytes: bytes per Orbax partial save (default perax.models.store.default_chunk_bytes).

  Returns:
    ``out_dir`` as an absolute path.

  Raises:
    InputError: anything wrong with the input or the output directory, in one line.
  """
  hf_dir = pathlib.Path(hf_dir)
  param_dtype = jnp.dtype(dtype)
  raw_config, config = read_hf_config(hf_dir)
  tokenizer_files.check_processor_files(hf_dir)
  tokenizer_files.check_audio_token(hf_dir, config)
  config, plan = plan_conversion(hf_dir, config)
  total_bytes = sum(math.prod(entry.shape) for entry in plan) * param_dtype.itemsize

  def write_files(folder: pathlib.Path) -> None:
    raw_config['tie_word_embeddings'] = config.tie_word_embeddings
    raw_config.setdefault('text_config', {})['tie_word_embeddings'] = config.tie_word_embeddings
    jsonio.write_json(folder / 'config.json', raw_config)
    for name in PROCESSOR_FILES:
      if (hf_dir / name).is_file():
        shutil.copy2(hf_dir / name, folder / name)

  meter = Progress(total=len(plan), unit='parameters', what='convert') if progress else None
  out = store.write(
    out_dir,
    ((entry.path, entry.read(param_dtype)) for entry in plan),
    total_bytes=total_bytes,
    write_files=write_files,
    info={
      'dtype': param_dtype.name,
      'perax_version': importlib.metadata.version('perax'),
      'source': str(hf_dir.resolve()),
    },
    overwrite=overwrite,
    chunk_bytes=chunk_bytes,
    progress=meter,
  )
  if meter:
    meter.close()
  return out
