"""Fit planner: compiles a run's programs abstractly (no weights) and reads XLA's own figures.

For a Qwen2-Audio config, a (data, fsdp, tensor) mesh and a batch, this module builds the model with
``nnx.eval_shape`` (shapes and dtypes only), lowers and compiles ahead of time

- ``encode``: the audio encoder on B clips of the clip's feature bucket;
- ``prefill``: perax.raters.decoding.prefill (merge_audio and one decoder pass) over B prompts,
  writing a KV cache of the prompt bucket's slots (as the sampler's prefill);
- ``decode_step``: one token for the B * K vote rows over the sampler's shared-prefix cache (one
  prompt cache per clip, shared by its K votes, each vote with ``new_tokens - 1`` suffix slots);
- ``train_step``: perax.train.step's training step (LoRA or another scope) on B examples;

with parameters placed by perax.models.sharding's logical-axis rules and batches split over
(data, fsdp), and reports per device, from ``compiled.memory_analysis()``, the argument, output,
alias and temp bytes, from ``compiled.cost_analysis()`` the FLOPs and bytes accessed, and the lower
and compile times. The inference programs keep every weight as an argument (the sampler holds the whole
model on its devices), so their argument bytes are the resident weights plus the inputs. A program fits a
device when ``argument + output - alias + temp`` (its
:attr:`ProgramPlan.peak_bytes`) is below the device's memory.

The figures are XLA's for the backend that compiles (CPU when planning on a laptop): buffer
assignment on a GPU differs somewhat, so treat them as estimates with a margin. In particular the CPU
backend computes bf16 matmuls in float32, and a bf16 plan's temp bytes on CPU can hold float32 copies
of the weights that a GPU compile would not make (at 7B, fsdp=8, the prefill's ~31 GiB of temp per
device is about the size of float32 decoder weights; not verified on a GPU).

:func:`cache_bytes` gives the KV-cache bytes per vote for both layouts (one prompt cache per vote,
or one per clip shared by its K votes); :func:`measure` runs compiled programs on random inputs and
returns achieved FLOP/s, for configs small enough to hold on the planning machine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from perax.configs import config_path
from perax.data import features
from perax.models import activation_sharding, sharding
from perax.models import cache as kv_cache
from perax.models.config import Qwen2AudioConfig
from perax.models.qwen2_audio import Qwen2AudioForConditionalGeneration
from perax.raters import decoding, prompts
from perax.train import mesh as mesh_lib
from perax.train import model as model_lib
from perax.train import optim
from perax.train import state as state_lib
from perax.train import step as step_lib

QWEN2_AUDIO_7B = config_path('qwen2_audio_7b.json')
LORA_TARGETS = ('language_model/.*/(q_proj|k_proj|v_proj|o_proj)',)
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class PlanSettings:
  """What to plan.

  Attributes:
    mesh: (data, fsdp, tensor) sizes; their product is the number of devices.
    batch_size: clips per sampler batch and examples per training step (global, all devices).
    clip_seconds: clip duration; sets the feature bucket and the audio tokens of a prompt.
    votes_per_clip: K vote rows decoded per clip.
    new_tokens: tokens generated per vote (cache room after the prompt).
    prompt_text_tokens: the prompt's tokens besides the audio ones (chat template, question).
    transcript_tokens: a training prompt's extra room for a transcript.
    compute_dtype: activations and matmuls.
    param_dtype: the backbone's stored weights (at inference and, frozen, in LoRA or head training).
    scope: trainable part: 'head', 'lora' or 'full' (perax.train.state.SCOPES).
    lora_targets, lora_rank: the adapters, with scope 'lora'.
    head: 'linear' or 'mlp' head; num_classes: its outputs.
    num_microbatches: gradient-accumulation steps per training step.
    scan_layers: run the layer stacks as a scan (perax.models.layer_stack); None keeps the config's.
    remat_policy: the layers' remat policy; None keeps the config's.
  """

  mesh: tuple[int, int, int] = (1, 1, 1)
  batch_size: int = 8
  clip_seconds: float = 10.0
  votes_per_clip: int = 10
  new_tokens: int = 8
  prompt_text_tokens: int = 64
  transcript_tokens: int = 64
  compute_dtype: str = 'bfloat16'
  param_dtype: str = 'bfloat16'
  scope: str = 'lora'
  lora_targets: tuple[str, ...] = LORA_TARGETS
  lora_rank: int = 16
  head: str = 'mlp'
  num_classes: int = 4
  num_microbatches: int = 1
  scan_layers: bool | None = None
  remat_policy: str | None = None

  def model_config(self, config: Qwen2AudioConfig) -> Qwen2AudioConfig:
    """``config`` with this plan's layer-stack overrides."""
    return config.with_overrides(scan_layers=self.scan_layers, remat_policy=self.remat_policy)


@dataclasses.dataclass(frozen=True)
class Shapes:
  """The array sizes a clip duration implies.

  Attributes:
    feature_frames: F, log-mel frames of the clip's bucket (100 per second).
    audio_slots: F // 4, audio embeddings per clip.
    audio_tokens: ``<|AUDIO|>`` tokens of a clip of ``clip_seconds`` (HF's count).
    prompt_length: the sampler's prompt bucket holding audio and text tokens.
    train_length: a training prompt's length (audio, text and transcript, rounded up to 64).
  """

  feature_frames: int
  audio_slots: int
  audio_tokens: int
  prompt_length: int
  train_length: int

  @classmethod
  def for_settings(cls, settings: PlanSettings) -> Shapes:
    samples = int(math.ceil(settings.clip_seconds * features.SAMPLE_RATE))
    frames = features.bucket_for(samples) * features.FRAMES_PER_SECOND
    tokens = int(prompts.num_audio_tokens(np.asarray([features.valid_frames(samples)]))[0])
    prompt = decoding.prompt_bucket(tokens + settings.prompt_text_tokens)
    train = -(-(tokens + settings.prompt_text_tokens + settings.transcript_tokens) // 64) * 64
    return cls(frames, frames // 4, tokens, prompt, train)


@dataclasses.dataclass
class ProgramPlan:
  """XLA's figures for one compiled program, per device (bytes, FLOPs, seconds).

  ``flops`` and ``bytes_accessed`` come from ``cost_analysis()`` of the partitioned program (one
  device's share); None where the backend does not report them. XLA counts a loop body once:
  :func:`plan_programs` corrects ``flops`` for scanned layer stacks; ``bytes_accessed`` stays XLA's.
  """

  name: str
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  flops: float | None
  bytes_accessed: float | None
  lower_seconds: float
  compile_seconds: float
  compiled: Any = dataclasses.field(default=None, repr=False, compare=False)
  args: tuple = dataclasses.field(default=(), repr=False, compare=False)

  @property
  def peak_bytes(self) -> int:
    """Live bytes per device at most: arguments, outputs not aliased to arguments, temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  def to_json(self) -> dict:
    out = {
      f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ('compiled', 'args')
    }
    out['peak_bytes'] = self.peak_bytes
    return out

  def line(self) -> str:
    flops = 'n/a' if self.flops is None else f'{self.flops:.3g}'
    return (
      f'{self.name}: per device arguments {self.argument_bytes / GIB:.2f} GiB, temp '
      f'{self.temp_bytes / GIB:.2f} GiB, outputs {self.output_bytes / GIB:.2f} GiB (aliased '
      f'{self.alias_bytes / GIB:.2f}), peak {self.peak_bytes / GIB:.2f} GiB; {flops} FLOP; lower '
      f'{self.lower_seconds:.1f} s, compile {self.compile_seconds:.1f} s'
    )


def load_config(path: str = QWEN2_AUDIO_7B) -> Qwen2AudioConfig:
  """A Qwen2AudioConfig from a HF config.json (default: Qwen2-Audio-7B-Instruct's, shipped)."""
  with open(path, encoding='utf-8') as f:
    return Qwen2AudioConfig.from_hf_dict(json.load(f), path=path)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over the first ``prod(shape)`` devices."""
  devices = list(jax.devices() if devices is None else devices)
  needed = math.prod(shape)
  if needed > len(devices):
    raise ValueError(
      f'mesh {tuple(shape)} needs {needed} devices, {len(devices)} are visible (on CPU set '
      f'XLA_FLAGS=--xla_force_host_platform_device_count={needed} before jax starts)'
    )
  return sharding.make_mesh(*shape, devices=devices[:needed])


def _with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _split_batch(mesh: Mesh, shape: Sequence[int], dtype) -> jax.ShapeDtypeStruct:
  """An abstract input whose leading (batch) axis is split over (data, fsdp) where it divides."""
  axes = ('batch',) + (None,) * (len(shape) - 1)
  spec = sharding.partition_spec(axes, shape, mesh)
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=NamedSharding(mesh, spec))


def _cost(compiled) -> tuple[float | None, float | None]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost:
    return None, None
  flops, accessed = cost.get('flops'), cost.get('bytes accessed')
  return (None if flops is None else float(flops)), (None if accessed is None else float(accessed))


def compile_program(name: str, jitted, *abstract_args) -> ProgramPlan:
  """Lowers and compiles ``jitted`` for abstract arguments and reads its memory and cost figures."""
  start = time.perf_counter()
  lowered = jitted.lower(*abstract_args)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  stats = compiled.memory_analysis()

  def stat(field: str) -> int:
    return int(getattr(stats, field, 0) or 0) if stats is not None else 0

  flops, accessed = _cost(compiled)
  return ProgramPlan(
    name=name,
    argument_bytes=stat('argument_size_in_bytes'),
    output_bytes=stat('output_size_in_bytes'),
    alias_bytes=stat('alias_size_in_bytes'),
    temp_bytes=stat('temp_size_in_bytes'),
    code_bytes=stat('generated_code_size_in_bytes'),
    flops=flops,
    bytes_accessed=accessed,
    lower_seconds=lowered_at - start,
    compile_seconds=compiled_at - lowered_at,
    compiled=compiled,
    args=abstract_args,
  )


def abstract_backbone(config: Qwen2AudioConfig, compute_dtype: str, param_dtype: str) -> nnx.Module:
  """The model with ShapeDtypeStructs for weights: nothing is allocated."""
  dtype, stored = model_lib.dtype_from_name(compute_dtype), model_lib.dtype_from_name(param_dtype)
  return nnx.eval_shape(
    lambda: Qwen2AudioForConditionalGeneration(config, dtype=dtype, param_dtype=stored, rngs=nnx.Rngs(0))
  )


def decode_cache_shape(config: Qwen2AudioConfig, settings: PlanSettings, dtype) -> kv_cache.KVCache:
  """The abstract shared-prefix cache of perax.raters.decoding.sample_votes: one prompt cache per
  clip (the prompt bucket's slots) and ``new_tokens - 1`` suffix slots for each of its K votes."""
  length = Shapes.for_settings(settings).prompt_length
  return jax.eval_shape(
    lambda: kv_cache.shared_prefix_cache(
      kv_cache.init_cache(config, settings.batch_size, length, dtype),
      settings.votes_per_clip,
      max(settings.new_tokens - 1, 1),
    )
  )


def inference_programs(
  config: Qwen2AudioConfig,
  settings: PlanSettings,
  mesh: Mesh,
  names: Sequence[str] = ('encode', 'prefill', 'decode_step'),
) -> dict[str, ProgramPlan]:
  """Compiles the sampler's encode, prefill and one decode step with sharded weights and cache.

  The prefill is perax.raters.decoding.prefill (a prompt cache of exactly the prompt bucket's
  slots); the decode step is one token of the B * K vote rows over sample_votes' shared-prefix cache.
  """
  shapes = Shapes.for_settings(settings)
  model = abstract_backbone(config, settings.compute_dtype, settings.param_dtype)
  graphdef, state = nnx.split(model)
  state = _with_shardings(state, sharding.parameter_shardings(state, mesh))
  dtype = model_lib.dtype_from_name(settings.compute_dtype)
  batch, votes, length = settings.batch_size, settings.votes_per_clip, shapes.prompt_length
  hidden = config.text.hidden_size
  plans = {}

  if 'encode' in names:

    def encode(state, input_features, feature_lengths):
      with activation_sharding.active(mesh):
        return nnx.merge(graphdef, state).encode_audio(input_features, feature_lengths)

    plans['encode'] = compile_program(
      'encode',
      jax.jit(encode, keep_unused=True),
      state,
      _split_batch(mesh, (batch, config.audio.num_mel_bins, shapes.feature_frames), jnp.float32),
      _split_batch(mesh, (batch,), jnp.int32),
    )

  if 'prefill' in names:
    prefill_cache = kv_cache.cache_shardings(
      jax.eval_shape(lambda: kv_cache.init_cache(config, batch, length, dtype)), mesh
    )

    @activation_sharding.traced_in(mesh)
    def prefill(state, embeds, valid, ids, mask):
      logits, cache, _ = decoding.prefill(nnx.merge(graphdef, state), config, embeds, valid, ids, mask, mesh)
      return logits, cache

    plans['prefill'] = compile_program(
      'prefill',
      jax.jit(prefill, out_shardings=(None, prefill_cache), keep_unused=True),
      state,
      _split_batch(mesh, (batch, shapes.audio_slots, hidden), dtype),
      _split_batch(mesh, (batch, shapes.audio_slots), jnp.bool_),
      _split_batch(mesh, (batch, length), jnp.int32),
      _split_batch(mesh, (batch, length), jnp.bool_),
    )

  if 'decode_step' in names:
    rows = batch * votes
    cache_shape = decode_cache_shape(config, settings, dtype)
    decode_cache = kv_cache.cache_shardings(cache_shape, mesh)

    @activation_sharding.traced_in(mesh)
    def decode_step(state, tokens, positions, cache):
      model = nnx.merge(graphdef, state)
      out = model(
        input_ids=tokens, positions=positions, attention_mask=jnp.ones(tokens.shape, bool), cache=cache
      )
      token = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
      return token, decoding.constrain_cache(out.cache, mesh)

    plans['decode_step'] = compile_program(
      'decode_step',
      jax.jit(decode_step, out_shardings=(None, decode_cache), donate_argnums=3, keep_unused=True),
      state,
      _split_batch(mesh, (rows, 1), jnp.int32),
      _split_batch(mesh, (rows, 1), jnp.int32),
      _with_shardings(cache_shape, decode_cache),
    )
  return plans


def train_program(config: Qwen2AudioConfig, settings: PlanSettings, mesh: Mesh) -> ProgramPlan:
  """Compiles perax.train.step's training step for the settings' scope, batch and mesh."""
  shapes = Shapes.for_settings(settings)
  options = model_lib.ModelOptions(
    num_classes=settings.num_classes,
    head=settings.head,
    scope=settings.scope,
    lora_targets=settings.lora_targets,
    lora_rank=settings.lora_rank,
    lora_alpha=2.0 * settings.lora_rank,
  )
  dtype = model_lib.dtype_from_name(settings.compute_dtype)
  stored = model_lib.dtype_from_name(settings.param_dtype if settings.scope != 'full' else 'float32')

  def build():
    backbone = Qwen2AudioForConditionalGeneration(config, dtype=dtype, param_dtype=stored, rngs=nnx.Rngs(0))
    return model_lib.wrap_backbone(backbone, config, options)[0]

  graphdef, params, frozen = state_lib.split_model(nnx.eval_shape(build), settings.scope)
  tx, schedule = optim.make_optimizer(learning_rate=1e-4, total_steps=1000, warmup_steps=100)
  state = jax.eval_shape(lambda p, f: state_lib.create_train_state(p, f, tx), params, frozen)
  shardings = mesh_lib.state_shardings(state, mesh)
  step = step_lib.make_train_step(
    graphdef, loss='kl', tx=tx, schedule=schedule, mesh=mesh, num_microbatches=settings.num_microbatches
  )
  compiler = step_lib.train_step_compiler(step, shardings, mesh)
  rows, length = settings.batch_size, shapes.train_length
  batch = {
    'input_features': jax.ShapeDtypeStruct(
      (rows, config.audio.num_mel_bins, shapes.feature_frames), jnp.float32
    ),
    'feature_lengths': jax.ShapeDtypeStruct((rows,), jnp.int32),
    'input_ids': jax.ShapeDtypeStruct((rows, length), jnp.int32),
    'attention_mask': jax.ShapeDtypeStruct((rows, length), jnp.bool_),
    'positions': jax.ShapeDtypeStruct((rows, length), jnp.int32),
    'targets': jax.ShapeDtypeStruct((rows, settings.num_classes), jnp.float32),
    'example_mask': jax.ShapeDtypeStruct((rows,), jnp.bool_),
  }
  return compile_program('train_step', compiler.jitted, _with_shardings(state, shardings), batch)


def plan_programs(
  config: Qwen2AudioConfig, settings: PlanSettings, mesh: Mesh, names: Sequence[str]
) -> dict[str, ProgramPlan]:
  """Compiles the named programs ('encode', 'prefill', 'decode_step', 'train_step'); their FLOPs count
  every layer also when the stacks are scanned (:func:`layer_exact_flops`)."""
  plans = {}
  inference = [name for name in names if name != 'train_step']
  if inference:
    plans.update(inference_programs(config, settings, mesh, names=inference))
  if 'train_step' in names:
    plans['train_step'] = train_program(config, settings, mesh)
  one_layer_each = config.audio.encoder_layers == config.text.num_hidden_layers == 1
  if config.scan_layers and not one_layer_each:  # a single layer's body is counted exactly
    for name, program in plans.items():
      program.flops = layer_exact_flops(config, settings, mesh, name)
  return {name: plans[name] for name in names}


def layer_exact_flops(
  config: Qwen2AudioConfig, settings: PlanSettings, mesh: Mesh, name: str
) -> float | None:
  """XLA's FLOPs of program ``name`` with every layer counted, per device.

  XLA's cost analysis counts a while loop's body once, so a scanned stack's N layers count as one.
  A program's FLOPs are linear in each stack's depth, so three compiles of the unrolled program at
  (encoder, decoder) depths (1, 1), (2, 1) and (1, 2) give them exactly:
  ``f(E, D) = f11 + (E - 1) (f21 - f11) + (D - 1) (f12 - f11)``. None where XLA gives no FLOPs.
  """

  def flops(encoder_layers: int, decoder_layers: int) -> float | None:
    shallow = dataclasses.replace(
      config,
      scan_layers=False,
      audio=dataclasses.replace(config.audio, encoder_layers=encoder_layers),
      text=dataclasses.replace(config.text, num_hidden_layers=decoder_layers),
    )
    if name == 'train_step':
      return train_program(shallow, settings, mesh).flops
    return inference_programs(shallow, settings, mesh, names=(name,))[name].flops

  base, deeper_encoder, deeper_decoder = flops(1, 1), flops(2, 1), flops(1, 2)
  if None in (base, deeper_encoder, deeper_decoder):
    return None
  return (
    base
    + (config.audio.encoder_layers - 1) * (deeper_encoder - base)
    + (config.text.num_hidden_layers - 1) * (deeper_decoder - base)
  )


def cache_bytes(
  config: Qwen2AudioConfig, settings: PlanSettings, dtype: str | None = None
) -> dict[str, float]:
  """KV-cache bytes per vote for a prompt of the settings' bucket plus the votes' new tokens.

  Returns:
    ``per_token``: bytes of one token's keys and values over all layers;
    ``per_vote_repeated``: (prompt + new tokens) slots per vote, the layout that copies a clip's
    prompt cache for each of its K votes;
    ``per_vote_shared``: the prompt's slots divided among the K votes plus each vote's own new
    tokens (one prompt cache per clip);
    ``per_batch_repeated`` / ``per_batch_shared``: the same for the B clips' K votes.
  """
  text = config.text
  itemsize = jnp.dtype(model_lib.dtype_from_name(dtype or settings.compute_dtype)).itemsize
  per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * itemsize
  prompt, new, votes = (
    Shapes.for_settings(settings).prompt_length,
    settings.new_tokens,
    settings.votes_per_clip,
  )
  repeated = per_token * (prompt + new)
  shared = per_token * (prompt / votes + new)
  rows = settings.batch_size * votes
  return {
    'per_token': float(per_token),
    'per_vote_repeated': float(repeated),
    'per_vote_shared': float(shared),
    'per_batch_repeated': float(repeated * rows),
    'per_batch_shared': float(shared * rows),
  }


def decode_unread_bytes(config: Qwen2AudioConfig, dtype: str) -> int:
  """Bytes of the weights a decode step holds but does not stream: the audio encoder, the projector
  and the token embedding (a decode step gathers one row of it per token). A decode step's argument
  bytes minus these (per device, on one device) are the bytes it must read at least once."""
  model = abstract_backbone(config, dtype, dtype)
  unread = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]:
    keys = [str(getattr(p, 'key', getattr(p, 'name', p))) for p in path]
    if keys[0] in ('audio_tower', 'multi_modal_projector') or keys[:2] == ['language_model', 'embed_tokens']:
      unread += leaf.size * jnp.dtype(leaf.dtype).itemsize
  return unread


def count_parameters(config: Qwen2AudioConfig) -> int:
  """Weights of the backbone as HF counts them (the audio encoder's position table included)."""
  model = abstract_backbone(config, 'float32', 'float32')
  return sum(x.size for x in jax.tree.leaves(nnx.state(model)))


@functools.cache
def _random_maker(shape: tuple[int, ...], dtype, sharding_: Any, scale: float):
  """One jitted generator per (shape, dtype, sharding): a model has few distinct ones."""

  def make(key):
    if jnp.issubdtype(dtype, jnp.floating):
      return (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    return jnp.ones(shape, dtype) if dtype == jnp.bool_ else jnp.zeros(shape, dtype)

  return jax.jit(make, out_shardings=sharding_)


def random_like(tree, seed: int = 0, scale: float = 0.02):
  """Concrete arrays with the shapes, dtypes and shardings of abstract ``tree``: floats drawn from
  ``normal(0, scale)``, integers zero, booleans True, each made on its devices by a jitted
  generator (the 'rbg' PRNG, quick to compile and run)."""
  leaves, treedef = jax.tree.flatten(tree)
  key = jax.random.key(seed, impl='rbg')
  made = [
    _random_maker(tuple(x.shape), jnp.dtype(x.dtype), getattr(x, 'sharding', None), scale)(
      jax.random.fold_in(key, index)
    )
    for index, x in enumerate(leaves)
  ]
  return jax.tree.unflatten(treedef, made)


def measure(plan: ProgramPlan, repeats: int = 3) -> float:
  """Best seconds of one call of ``plan``'s executable on random inputs of its arguments' shapes
  (:func:`random_like`), after one untimed call. Inputs are made afresh for every call (programs may
  donate them) and outside the timed span. Only for models that fit in this machine's memory."""
  best = float('inf')
  for turn in range(repeats + 1):
    args = jax.block_until_ready(random_like(plan.args, seed=turn))
    start = time.perf_counter()
    outputs = jax.block_until_ready(plan.compiled(*args))
    if turn:
      best = min(best, time.perf_counter() - start)
    del args, outputs  # one set of inputs alive at a time (7B weights on one device)
  return best
