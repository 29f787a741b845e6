"""Qwen2-Audio hyper-parameters, read from a Hugging Face ``config.json``.

``Qwen2AudioConfig.from_hf_dict(json.load(open('config.json')))`` accepts both the layout written by
transformers 5 (``text_config.rope_parameters``) and the older one (``text_config.rope_theta``).
Features perax does not implement (sliding-window attention, scaled RoPE, other activations) raise
:class:`perax.core.errors.InputError` instead of silently computing something else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from perax.core.errors import InputError
from perax.models.layer_stack import REMAT_POLICIES

MODEL_TYPE = 'qwen2_audio'
# The model class perax builds; a config.json whose ``architectures`` names another one is refused.
ARCHITECTURE = 'Qwen2AudioForConditionalGeneration'
# How attention is computed (perax.models.layers.dot_product_attention): 'einsum' (perax's own
# einsums, the reference), 'xla' or 'cudnn' (``jax.nn.dot_product_attention``; 'cudnn' is the fused
# kernel on NVIDIA GPUs and needs half-precision inputs).
ATTENTION_IMPLS = ('einsum', 'xla', 'cudnn')
# config.json key perax reads the attention implementation from (not an HF key).
ATTENTION_IMPL_KEY = 'perax_attention_impl'
# config.json keys of the layer stacks' execution (perax.models.layer_stack; not HF keys).
SCAN_LAYERS_KEY = 'perax_scan_layers'
REMAT_POLICY_KEY = 'perax_remat_policy'
# torch.nn.LayerNorm's default epsilon, which HF's Whisper-style audio encoder uses everywhere.
AUDIO_LAYER_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class AudioEncoderConfig:
  """The Whisper-style audio encoder (HF ``Qwen2AudioEncoderConfig``).

  Attributes:
    num_mel_bins: log-mel channels of the input features (128).
    d_model: encoder width.
    encoder_layers: number of transformer layers.
    encoder_attention_heads: attention heads; d_model must be divisible by it.
    encoder_ffn_dim: width of the GELU feed-forward block.
    max_source_positions: rows of the sinusoidal position table = frames after the stride-2 conv
      (1500 for 30 s of audio, i.e. 3000 feature frames).
  """

  num_mel_bins: int = 128
  d_model: int = 1280
  encoder_layers: int = 32
  encoder_attention_heads: int = 20
  encoder_ffn_dim: int = 5120
  max_source_positions: int = 1500

  @property
  def head_dim(self) -> int:
    return self.d_model // self.encoder_attention_heads

  @property
  def max_feature_frames(self) -> int:
    """Longest input the position table covers: two feature frames per position (3000 = 30 s)."""
    return 2 * self.max_source_positions


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The Qwen2 decoder (HF ``Qwen2Config``), full attention and default RoPE only.

  Attributes:
    vocab_size: rows of embed_tokens and lm_head.
    hidden_size: decoder width.
    intermediate_size: width of the SwiGLU MLP.
    num_hidden_layers: decoder layers.
    num_attention_heads: query heads.
    num_key_value_heads: key/value heads; num_attention_heads must be a multiple of it (GQA).
    head_dim: per-head width (hidden_size // num_attention_heads unless the config says otherwise).
    rms_norm_eps: RMSNorm epsilon.
    rope_theta: RoPE base.
    max_position_embeddings: longest sequence the model was trained for (informational).
    pad_token_id, bos_token_id, eos_token_id: as in the HF config (eos may be a tuple).
  """

  vocab_size: int = 156032
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 32
  head_dim: int = 128
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  max_position_embeddings: int = 8192
  pad_token_id: int | None = None
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None

  @property
  def num_kv_groups(self) -> int:
    """Query heads sharing one key/value head."""
    return self.num_attention_heads // self.num_key_value_heads


@dataclasses.dataclass(frozen=True)
class Qwen2AudioConfig:
  """Everything the Flax port needs to build Qwen2-Audio.

  Attributes:
    audio: the audio encoder's hyper-parameters.
    text: the decoder's hyper-parameters.
    audio_token_id: id of ``<|AUDIO|>``; the processor repeats it once per valid audio embedding.
    tie_word_embeddings: lm_head shares embed_tokens' matrix (no ``lm_head.weight`` in the
      checkpoint). HF's Qwen2AudioForConditionalGeneration always keeps a separate lm_head, so the
      converter decides this from the checkpoint's tensors, not from the flag in config.json.
    attention_impl: one of :data:`ATTENTION_IMPLS`, used by every attention layer (encoder and
      decoder). Read from config.json's ``perax_attention_impl`` when present; callers override it
      with ``dataclasses.replace`` or perax.models.loading.load_model(attention_impl=...).
    scan_layers: run both layer stacks as a ``jax.lax.scan`` (one compiled layer) rather than
      unrolled (perax.models.layer_stack). The parameters are stacked either way.
    remat_policy: what each layer keeps for the backward pass, one of
      perax.models.layer_stack.REMAT_POLICIES. Both are read from config.json's
      ``perax_scan_layers`` / ``perax_remat_policy`` when present and overridden like
      ``attention_impl``.
  """

  audio: AudioEncoderConfig
  text: TextConfig
  audio_token_id: int = 151646
  tie_word_embeddings: bool = False
  attention_impl: str = 'einsum'
  scan_layers: bool = True
  remat_policy: str = 'none'

  def __post_init__(self):
    if self.attention_impl not in ATTENTION_IMPLS:
      raise InputError(f'attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}')
    if not isinstance(self.scan_layers, bool):
      raise InputError(f'scan_layers must be true or false, got {self.scan_layers!r}')
    if self.remat_policy not in REMAT_POLICIES:
      raise InputError(f'remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}')

  def with_overrides(self, **overrides: Any) -> Qwen2AudioConfig:
    """This config with the given fields replaced; a None value keeps the field (callers pass their
    optional overrides through, e.g. ``attention_impl=None``). Values are validated as at construction."""
    return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

  @classmethod
  def from_hf_dict(cls, config: Mapping[str, Any], path: os.PathLike | str | None = None) -> Qwen2AudioConfig:
    """Builds the config from a parsed HF ``config.json``.

    Args:
      config: the JSON object of a Qwen2-Audio checkpoint (model_type ``qwen2_audio``).
      path: the file it came from, named in errors.

    Raises:
      InputError: wrong model type, missing sizes, or a feature the port does not implement.
    """

    def fail(message: str) -> InputError:
      return InputError(message, path=path)

    if config.get('model_type') != MODEL_TYPE:
      raise fail(
        f'model_type is {config.get("model_type")!r}: perax implements only {MODEL_TYPE!r} ({ARCHITECTURE})'
      )
    architectures = config.get('architectures') or [ARCHITECTURE]
    if ARCHITECTURE not in architectures:
      raise fail(
        f'architectures {architectures} do not include {ARCHITECTURE!r}, the only model class perax builds'
      )
    audio_dict = dict(config.get('audio_config') or {})
    text_dict = dict(config.get('text_config') or {})

    activation = audio_dict.get('activation_function', 'gelu')
    if activation != 'gelu':
      raise fail(f'audio_config.activation_function {activation!r} is not supported (only gelu)')
    audio_fields = {f.name for f in dataclasses.fields(AudioEncoderConfig)}
    audio = AudioEncoderConfig(**{k: v for k, v in audio_dict.items() if k in audio_fields})
    if audio.d_model % audio.encoder_attention_heads:
      raise fail(
        f'audio_config.d_model {audio.d_model} is not divisible by '
        f'encoder_attention_heads {audio.encoder_attention_heads}'
      )

    hidden_act = text_dict.get('hidden_act', 'silu')
    if hidden_act != 'silu':
      raise fail(f'text_config.hidden_act {hidden_act!r} is not supported (only silu)')
    if text_dict.get('use_sliding_window'):
      raise fail('text_config.use_sliding_window is true; sliding-window attention is not supported')
    rope = dict(text_dict.get('rope_parameters') or {})
    rope_type = rope.get('rope_type', rope.get('type', 'default'))
    if rope_type != 'default' or text_dict.get('rope_scaling'):
      raise fail(f'text_config RoPE type {rope_type!r} / rope_scaling is not supported (only default)')
    rope_theta = rope.get('rope_theta', text_dict.get('rope_theta', TextConfig.rope_theta))

    text_fields = {f.name for f in dataclasses.fields(TextConfig)} - {'head_dim', 'rope_theta'}
    text_kwargs = {k: v for k, v in text_dict.items() if k in text_fields}
    if text_kwargs.get('num_key_value_heads') is None:
      text_kwargs['num_key_value_heads'] = text_kwargs.get(
        'num_attention_heads', TextConfig.num_attention_heads
      )
    if isinstance(text_kwargs.get('eos_token_id'), list):
      text_kwargs['eos_token_id'] = tuple(text_kwargs['eos_token_id'])
    hidden = text_kwargs.get('hidden_size', TextConfig.hidden_size)
    heads = text_kwargs.get('num_attention_heads', TextConfig.num_attention_heads)
    head_dim = text_dict.get('head_dim') or hidden // heads
    text = TextConfig(**text_kwargs, head_dim=head_dim, rope_theta=float(rope_theta))
    if text.num_attention_heads % text.num_key_value_heads:
      raise fail(
        f'text_config.num_attention_heads {text.num_attention_heads} is not a multiple of '
        f'num_key_value_heads {text.num_key_value_heads}'
      )
    if text.head_dim % 2:
      raise fail(f'text_config head_dim {text.head_dim} is odd; rotate-half RoPE needs it even')

    audio_token_id = config.get('audio_token_index', config.get('audio_token_id'))
    if audio_token_id is None:
      audio_token_id = cls.audio_token_id
    tie = text_dict.get('tie_word_embeddings', config.get('tie_word_embeddings', False))
    attention_impl = config.get(ATTENTION_IMPL_KEY, cls.attention_impl)
    if attention_impl not in ATTENTION_IMPLS:
      raise fail(f'{ATTENTION_IMPL_KEY} must be one of {ATTENTION_IMPLS}, got {attention_impl!r}')
    scan_layers = config.get(SCAN_LAYERS_KEY, cls.scan_layers)
    if not isinstance(scan_layers, bool):
      raise fail(f'{SCAN_LAYERS_KEY} must be true or false, got {scan_layers!r}')
    remat_policy = config.get(REMAT_POLICY_KEY, cls.remat_policy)
    if remat_policy not in REMAT_POLICIES:
      raise fail(f'{REMAT_POLICY_KEY} must be one of {REMAT_POLICIES}, got {remat_policy!r}')
    return cls(
      audio=audio,
      text=text,
      audio_token_id=int(audio_token_id),
      tie_word_embeddings=bool(tie),
      attention_impl=attention_impl,
      scan_layers=scan_layers,
      remat_policy=remat_policy,
    )
