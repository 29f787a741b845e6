"""The one HF <-> perax parameter name table, with the transform each tensor goes through.

Names go through one table, :data:`RULES`: an HF name pattern, the perax parameter path (a path in
``nnx.state(Qwen2AudioForConditionalGeneration)``, dot-joined) and a transform hook (Linear weights
``[out, in]`` are transposed and reshaped to ``[in..., out...]``, Conv1d ``[out, in, width]``
becomes ``[width, in, out]``). Checkpoints name tensors in one of two layouts; the older one (the
released Qwen2-Audio checkpoints, and what transformers 5 ``save_pretrained`` writes) is first
rewritten to the newer one (transformers 5's module tree) by :data:`LEGACY_PREFIXES`.

The table's perax paths name one layer (``language_model.layers.{i}.mlp.up_proj.kernel``); the
model stacks each tower's layers into one parameter with a leading layer axis
(perax.models.layer_stack), and :func:`stacked_slot` maps such a path to (stacked parameter path,
layer index).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# Older checkpoint names -> transformers 5 names, applied once to a name's prefix.
LEGACY_PREFIXES = (
  ('audio_tower.', 'model.audio_tower.'),
  ('multi_modal_projector.', 'model.multi_modal_projector.'),
  ('language_model.model.', 'model.language_model.'),
  ('language_model.lm_head.', 'lm_head.'),
)


@dataclasses.dataclass(frozen=True)
class Transform:
  """How one HF tensor becomes one perax parameter.

  Attributes:
    name: shown in errors.
    hf_shape: perax parameter shape -> the HF tensor shape it needs.
    apply: (HF array, perax shape, dtype) -> C-contiguous array of that shape and dtype.
  """

  name: str
  hf_shape: Callable[[tuple[int, ...]], tuple[int, ...]]
  apply: Callable[[np.ndarray, tuple[int, ...], Any], np.ndarray]


def _linear(in_dims: int) -> Transform:
  """Linear weight ``[out, in]`` -> kernel ``[*in_shape, *out_shape]`` whose first in_dims dims are
  the input (e.g. o_proj ``[hidden, heads * head_dim]`` -> ``[heads, head_dim, hidden]``)."""
  return Transform(
    name=f'linear (transpose, {in_dims} input dims)',
    hf_shape=lambda shape: (math.prod(shape[in_dims:]), math.prod(shape[:in_dims])),
    apply=lambda array, shape, dtype: np.ascontiguousarray(array.T, dtype=dtype).reshape(shape),
  )


COPY = Transform(
  'copy', lambda shape: shape, lambda array, shape, dtype: np.ascontiguousarray(array, dtype=dtype)
)
FLAT = Transform(
  'reshape flat vector',
  lambda shape: (math.prod(shape),),
  lambda array, shape, dtype: np.ascontiguousarray(array, dtype=dtype).reshape(shape),
)
LINEAR = _linear(1)
LINEAR_FROM_HEADS = _linear(2)
CONV1D = Transform(
  'conv1d [out, in, width] -> [width, in, out]',
  lambda shape: (shape[2], shape[1], shape[0]),
  lambda array, shape, dtype: np.ascontiguousarray(array.transpose(2, 1, 0), dtype=dtype),
)

_AUDIO = 'model.audio_tower.'
_AUDIO_LAYER = _AUDIO + 'layers.{i}.'
_TEXT = 'model.language_model.'
_TEXT_LAYER = _TEXT + 'layers.{i}.'
# (HF name, perax path, transform). ``{x}`` matches digits, ``{x:a|b}`` one of the alternatives;
# the perax path reuses the placeholders.
RULES = (
  (_AUDIO + 'conv{n:1|2}.weight', 'audio_tower.conv{n}.kernel', CONV1D),
  (_AUDIO + 'conv{n:1|2}.bias', 'audio_tower.conv{n}.bias', COPY),
  (_AUDIO + 'embed_positions.weight', 'audio_tower.embed_positions', COPY),
  (
    _AUDIO_LAYER + 'self_attn.{p:q|k|v}_proj.weight',
    'audio_tower.layers.{i}.self_attn.{p}_proj.kernel',
    LINEAR,
  ),
  (_AUDIO_LAYER + 'self_attn.{p:q|v}_proj.bias', 'audio_tower.layers.{i}.self_attn.{p}_proj.bias', FLAT),
  (
    _AUDIO_LAYER + 'self_attn.out_proj.weight',
    'audio_tower.layers.{i}.self_attn.out_proj.kernel',
    LINEAR_FROM_HEADS,
  ),
  (_AUDIO_LAYER + 'self_attn.out_proj.bias', 'audio_tower.layers.{i}.self_attn.out_proj.bias', COPY),
  (_AUDIO_LAYER + '{m:fc1|fc2}.weight', 'audio_tower.layers.{i}.{m}.kernel', LINEAR),
  (_AUDIO_LAYER + '{m:fc1|fc2}.bias', 'audio_tower.layers.{i}.{m}.bias', COPY),
  (
    _AUDIO_LAYER + '{m:self_attn_layer_norm|final_layer_norm}.weight',
    'audio_tower.layers.{i}.{m}.scale',
    COPY,
  ),
  (_AUDIO_LAYER + '{m:self_attn_layer_norm|final_layer_norm}.bias', 'audio_tower.layers.{i}.{m}.bias', COPY),
  (_AUDIO + 'layer_norm.weight', 'audio_tower.layer_norm.scale', COPY),
  (_AUDIO + 'layer_norm.bias', 'audio_tower.layer_norm.bias', COPY),
  ('model.multi_modal_projector.linear.weight', 'multi_modal_projector.linear.kernel', LINEAR),
  ('model.multi_modal_projector.linear.bias', 'multi_modal_projector.linear.bias', COPY),
  (_TEXT + 'embed_tokens.weight', 'language_model.embed_tokens.embedding', COPY),
  (
    _TEXT_LAYER + 'self_attn.{p:q|k|v}_proj.weight',
    'language_model.layers.{i}.self_attn.{p}_proj.kernel',
    LINEAR,
  ),
  (_TEXT_LAYER + 'self_attn.{p:q|k|v}_proj.bias', 'language_model.layers.{i}.self_attn.{p}_proj.bias', FLAT),
  (
    _TEXT_LAYER + 'self_attn.o_proj.weight',
    'language_model.layers.{i}.self_attn.o_proj.kernel',
    LINEAR_FROM_HEADS,
  ),
  (_TEXT_LAYER + 'mlp.{p:gate|up|down}_proj.weight', 'language_model.layers.{i}.mlp.{p}_proj.kernel', LINEAR),
  (
    _TEXT_LAYER + '{m:input_layernorm|post_attention_layernorm}.weight',
    'language_model.layers.{i}.{m}.scale',
    COPY,
  ),
  (_TEXT + 'norm.weight', 'language_model.norm.scale', COPY),
  ('lm_head.weight', 'lm_head.kernel', LINEAR),
)
EMBED_TOKENS = _TEXT + 'embed_tokens.weight'
LM_HEAD = 'lm_head.weight'

# A per-layer perax path: tower, layer index, the parameter inside the layer.
_LAYER_PATH = re.compile(r'(?P<tower>audio_tower|language_model)\.layers\.(?P<index>[0-9]+)\.(?P<rest>.+)\Z')

_PLACEHOLDER = re.compile(r'\{(\w+)(?::([^}]*))?\}')


def _compile(template: str, alternatives: Mapping[str, str]) -> re.Pattern:
  """A template with ``{x}`` / ``{x:a|b}`` placeholders -> an anchored regex with named groups."""
  parts, end = [], 0
  for match in _PLACEHOLDER.finditer(template):
    parts.append(re.escape(template[end : match.start()]))
    name = match.group(1)
    parts.append(f'(?P<{name}>{alternatives.get(name) or match.group(2) or r"[0-9]+"})')
    end = match.end()
  parts.append(re.escape(template[end:]))
  return re.compile(''.join(parts) + r'\Z')


@dataclasses.dataclass(frozen=True)
class _Rule:
  hf: re.Pattern
  perax: re.Pattern
  hf_template: str
  perax_template: str
  transform: Transform


def _build_rules() -> tuple[_Rule, ...]:
  rules = []
  for hf_template, perax_template, transform in RULES:
    alternatives = {m.group(1): m.group(2) for m in _PLACEHOLDER.finditer(hf_template)}
    rules.append(
      _Rule(
        hf=_compile(hf_template, alternatives),
        perax=_compile(perax_template, alternatives),
        hf_template=_PLACEHOLDER.sub(r'{\1}', hf_template),
        perax_template=perax_template,
        transform=transform,
      )
    )
  return tuple(rules)


_RULES = _build_rules()


def canonical_name(hf_name: str) -> str:
  """An HF tensor name in transformers 5's layout (older layouts rewritten by LEGACY_PREFIXES)."""
  for old, new in LEGACY_PREFIXES:
    if hf_name.startswith(old):
      return new + hf_name[len(old) :]
  return hf_name


def perax_path(hf_name: str) -> tuple[str, Transform] | None:
  """(perax parameter path, transform) for an HF tensor name, or None if no rule matches."""
  name = canonical_name(hf_name)
  for rule in _RULES:
    match = rule.hf.match(name)
    if match:
      return rule.perax_template.format(**match.groupdict()), rule.transform
  return None


def _rule_producing(path: str) -> tuple[_Rule, re.Match]:
  for rule in _RULES:
    match = rule.perax.match(path)
    if match:
      return rule, match
  raise KeyError(f'no conversion rule produces perax parameter {path!r}')


def hf_name(path: str) -> str:
  """The (transformers 5) HF tensor name that maps to a perax parameter path."""
  rule, match = _rule_producing(path)
  return rule.hf_template.format(**match.groupdict())


def hf_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The HF tensor shape that becomes perax parameter ``path`` of ``shape``."""
  return _rule_producing(path)[0].transform.hf_shape(shape)


def stacked_slot(path: str) -> tuple[str, int | None]:
  """(stacked parameter path, layer index) of a per-layer perax path; (path, None) for the others.

  ``'language_model.layers.3.mlp.up_proj.kernel'`` -> ``('language_model.layers.mlp.up_proj.kernel',
  3)``: slice 3 of the stacked parameter.
  """
  match = _LAYER_PATH.match(path)
  if match is None:
    return path, None
  return f'{match["tower"]}.layers.{match["rest"]}', int(match['index'])


def layer_path(stacked_path: str, index: int) -> str:
  """Inverse of :func:`stacked_slot`: the per-layer path of slice ``index`` of a stacked parameter."""
  tower, layers, rest = stacked_path.split('.', 2)
  if layers != 'layers':
    raise ValueError(f'{stacked_path!r} is not a stacked layer parameter')
  return f'{tower}.layers.{index}.{rest}'
