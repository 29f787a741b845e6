"""Synthetic votes from Qwen2-Audio in fixed-shape jitted batches: one prefill per clip, K votes.

:class:`Sampler` is the host-side interface: it encodes each clip once (``model.encode_audio`` on the
clip's feature bucket, not 30 s), pads prompts to a prompt bucket, keys the randomness by utterance,
and calls the jitted programs of perax.raters.decoding (generic fixed-shape decoding over a
shared-prefix cache) and perax.raters.label_scoring (the label trie and exact label scores).

Shapes are fixed per (batch size, prompt bucket, feature bucket, sampling config), so after warm-up
nothing recompiles; :func:`compile_count` counts compilations (jit cache entries).

Randomness never depends on a row's place in the batch: vote ``k`` of utterance ``u`` under prompt
``p`` uses ``fold_in(fold_in(fold_in(key(seed), hash(p)), hash(u)), k)``, folded again with the
step, so a clip sampled alone and inside a batch gets the same votes.

Stopping: a row stops at any id of ``eos_ids``. Stop strings are handled as token-level stop ids
plus a host-side trim: every token whose text contains a stop string stops the row in the loop, and
:meth:`Sampler.texts` cuts the decoded text at the first stop string (which also catches a stop
string spread over several tokens, at the price of decoding up to ``max_new_tokens``).

Sharded inference: with a mesh over ('data', 'fsdp', 'tensor'), the weights are placed by the model's
logical-axis rules (perax.models.sharding.parameter_shardings), so a model larger than one device
runs; batches are split over 'data' x 'fsdp' and the caches follow the same rules. Every program is
traced inside ``perax.models.activation_sharding.active(mesh)``, so the model's activation constraints
keep the batch split inside it too (without a mesh they are no-ops). A jit cache entry never mixes
the two: encode, sample_votes and score_labels take the mesh as a static argument and enter
``active`` for it themselves (``activation_sharding.traced_in_mesh_argument``).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from perax.models import sharding
from perax.raters import decoding, label_scoring, prompts
from perax.raters.decoding import (  # noqa: F401  (the sampler's public names)
  END_OF_TEXT,
  END_OF_TURN,
  NO_TOKEN,
  PROMPT_BUCKETS,
  SamplingConfig,
  eos_token_ids,
  prompt_bucket,
  stop_token_ids,
)
from perax.raters.label_scoring import LabelTokens, normalise  # noqa: F401

BATCH_MESH_AXES = ('data', 'fsdp')


@dataclasses.dataclass(frozen=True)
class EncodedAudio:
  """A batch of encoded clips, kept on device between prompts.

  Attributes:
    embeds: [B, A, H] projected audio embeddings (A = feature frames // 4).
    valid: [B, A] bool, the embeddings HF keeps (the prompt holds that many audio tokens per clip).
    num_tokens: [B] int32 ``valid.sum(-1)``, computed on the host from the feature lengths.
  """

  embeds: jax.Array
  valid: jax.Array
  num_tokens: np.ndarray


def stable_hash(text: str) -> int:
  """A process-independent 31-bit hash (CRC-32) used to derive per-utterance random keys."""
  return zlib.crc32(text.encode('utf-8')) & 0x7FFFFFFF


def batch_devices(mesh: Mesh | None) -> int:
  """Devices a batch is split over: the product of the mesh's 'data' and 'fsdp' sizes (1 without one)."""
  if mesh is None:
    return 1
  return int(np.prod([mesh.shape[a] for a in BATCH_MESH_AXES if a in mesh.shape]))


class Sampler:
  """Votes and label scores for fixed-size batches of clips.

  Args:
    model: a perax Qwen2AudioForConditionalGeneration (Flax NNX).
    tokenizer: the checkpoint's tokenizer (decodes votes, tokenizes labels).
    batch_size: B, clips per call (fewer clips are padded by repeating the first one).
    prompt_buckets: prompt lengths, in tokens, that inputs are left-padded to.
    mesh: a mesh over (some of) 'data', 'fsdp', 'tensor': weights are placed by the model's
      logical-axis rules, the batch is split over 'data' x 'fsdp' (B must divide evenly); None runs
      on the default device unsharded.
  """

  def __init__(
    self,
    model,
    tokenizer,
    *,
    batch_size: int,
    prompt_buckets: Sequence[int] = PROMPT_BUCKETS,
    mesh: Mesh | None = None,
  ):
    if batch_size % batch_devices(mesh):
      raise ValueError(
        f"batch_size {batch_size} is not a multiple of the mesh's data x fsdp devices ({batch_devices(mesh)})"
      )
    self.tokenizer = tokenizer
    self.batch_size = batch_size
    self.prompt_buckets = tuple(prompt_buckets)
    self.mesh = mesh
    self.model_config = model.config
    self._graphdef, state = nnx.split(model)
    self._state = state if mesh is None else jax.device_put(state, sharding.parameter_shardings(state, mesh))

  def config(self, *, stop_strings: Sequence[str] = (), **kwargs) -> SamplingConfig:
    """A SamplingConfig whose ``stop_ids`` cover ``stop_strings`` in this tokenizer."""
    return SamplingConfig(stop_ids=stop_token_ids(self.tokenizer, stop_strings), **kwargs)

  def encode(self, features: np.ndarray, feature_lengths: np.ndarray) -> EncodedAudio:
    """Encodes B clips once.

    Args:
      features: [B, 128, F] log-mel features of one bucket (B = batch_size).
      feature_lengths: [B] valid frames per clip.
    """
    self._check_rows(len(features), 'features')
    embeds, valid = decoding.encode(
      self._graphdef,
      self._state,
      self._shard(np.asarray(features, np.float32)),
      self._shard(np.asarray(feature_lengths, np.int32)),
      mesh=self.mesh,
    )
    return EncodedAudio(embeds, valid, prompts.num_audio_tokens(feature_lengths))

  def sample(
    self,
    audio: EncodedAudio,
    prompt_ids: Sequence[np.ndarray],
    config: SamplingConfig,
    *,
    seed: int,
    utt_ids: Sequence[str],
    prompt_id: str,
    label_tokens: LabelTokens | None = None,
  ) -> np.ndarray:
    """K votes per clip.

    Args:
      audio: the batch's encoded clips.
      prompt_ids: B token-id arrays, each holding ``audio.num_tokens[b]`` audio tokens.
      config: sampling configuration.
      seed: the run's seed.
      utt_ids: B utterance ids (their hashes key the randomness).
      prompt_id: the rater prompt's id (its hash keys the randomness too).
      label_tokens: the label set's token sequences; needed when ``config.constrained``.

    Returns:
      [B, K, max_new_tokens] int32 token ids; after a row's stopping token, NO_TOKEN.
    """
    if config.constrained:
      if label_tokens is None:
        raise ValueError('constrained sampling needs label_tokens')
      if config.max_new_tokens < label_tokens.ids.shape[1]:
        raise ValueError(
          f'constrained sampling needs max_new_tokens >= '
          f'{label_tokens.ids.shape[1]} (the longest label with {END_OF_TURN})'
        )
      trie = label_tokens.trie
    else:
      trie = decoding.TokenTrie.unconstrained()
    ids, mask = self._pad_prompts(prompt_ids)
    self._check_rows(len(utt_ids), 'utt_ids')
    utt_hashes = np.asarray([stable_hash(u) for u in utt_ids], np.uint32)
    tokens = decoding.sample_votes(
      self._graphdef,
      self.model_config,
      self._state,
      audio.embeds,
      audio.valid,
      self._shard(ids),
      self._shard(mask),
      self._shard(utt_hashes),
      np.uint32(seed & 0xFFFFFFFF),
      np.uint32(stable_hash(prompt_id)),
      trie.tokens,
      trie.next,
      config=config,
      mesh=self.mesh,
    )
    return np.asarray(tokens).reshape(self.batch_size, config.votes_per_clip, -1)

  def score(
    self, audio: EncodedAudio, prompt_ids: Sequence[np.ndarray], label_tokens: LabelTokens
  ) -> np.ndarray:
    """log P(answer == label followed by <|im_end|>) per clip and label.

    Returns:
      [B, C] float32 log-probabilities (not normalised over the label set; see
      perax.raters.label_scoring.normalise).
    """
    ids, mask = self._pad_prompts(prompt_ids)
    logp = label_scoring.score_labels(
      self._graphdef,
      self.model_config,
      self._state,
      audio.embeds,
      audio.valid,
      self._shard(ids),
      self._shard(mask),
      label_tokens.ids,
      label_tokens.lengths,
      mesh=self.mesh,
    )
    return np.asarray(logp)

  def texts(self, tokens: np.ndarray, stop_strings: Sequence[str] = ()) -> list[list[str]]:
    """Decodes [B, K, T] votes to text: special tokens dropped, cut at the first stop string."""
    out = []
    for clip in tokens:
      row_texts = []
      for vote in clip:
        text = self.tokenizer.decode(vote[vote != NO_TOKEN].tolist(), skip_special_tokens=True)
        for stop in stop_strings:
          text = text.split(stop, 1)[0]
        row_texts.append(text.strip())
      out.append(row_texts)
    return out

  def _pad_prompts(self, prompt_ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads B prompts to their bucket: ids [B, L] int32 and mask [B, L] bool."""
    self._check_rows(len(prompt_ids), 'prompt_ids')
    return decoding.pad_prompts(prompt_ids, self.prompt_buckets)

  def _check_rows(self, rows: int, what: str) -> None:
    if rows != self.batch_size:
      raise ValueError(
        f'{what} has {rows} rows; the sampler runs batches of {self.batch_size} (pad with pad_rows)'
      )

  def _shard(self, array: np.ndarray) -> jax.Array | np.ndarray:
    if self.mesh is None:
      return array
    return jax.device_put(array, decoding.batch_sharding(self.mesh, array.shape))


def compile_count() -> int:
  """Compilations so far in this process: entries in the jit caches of encode, sample and score.

  The jitted functions are shared by all samplers, so a second sampler over the same model
  architecture, shapes and shardings reuses the first one's compilations.
  """
  jitted = (decoding.encode, decoding.sample_votes, label_scoring.score_labels)
  return sum(fn._cache_size() for fn in jitted)  # pylint: disable=protected-access


def pad_rows(items: Sequence, batch_size: int) -> list:
  """``items`` padded to ``batch_size`` by repeating the first item (padded rows are discarded)."""
  if not items or len(items) > batch_size:
    raise ValueError(f'need 1..{batch_size} items, got {len(items)}')
  return list(items) + [items[0]] * (batch_size - len(items))


def lower_sample_votes(
  model,
  config: SamplingConfig,
  *,
  batch_size: int,
  prompt_length: int,
  feature_frames: int,
  mesh: Mesh | None = None,
) -> jax.stages.Lowered:
  """The vote program lowered for abstract inputs (no data, and no weights when ``model`` comes from
  ``nnx.eval_shape``): ``.compile().memory_analysis()`` / ``.cost_analysis()`` size a run before it
  happens.

  Args:
    model: a Qwen2AudioForConditionalGeneration, concrete or abstract.
    config: sampling configuration.
    batch_size: B clips; prompt_length: L prompt slots; feature_frames: F (audio tokens A = F // 4).
    mesh: as for :class:`Sampler`.
  """
  graphdef, state = nnx.split(model)
  if mesh is not None:
    shardings = sharding.parameter_shardings(state, mesh)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)

  def spec(shape, dtype):
    where = None if mesh is None else decoding.batch_sharding(mesh, shape)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=where)

  audio_tokens = feature_frames // 4
  trie = decoding.TokenTrie.unconstrained()
  return decoding.sample_votes.lower(
    graphdef,
    model.config,
    state,
    spec((batch_size, audio_tokens, model.config.text.hidden_size), model.dtype),
    spec((batch_size, audio_tokens), jnp.bool_),
    spec((batch_size, prompt_length), jnp.int32),
    spec((batch_size, prompt_length), jnp.bool_),
    spec((batch_size,), jnp.uint32),
    np.uint32(0),
    np.uint32(0),
    trie.tokens,
    trie.next,
    config=config,
    mesh=mesh,
  )
