"""Synthetic votes from Qwen2-Audio in fixed-shape jitted batches: one prefill per clip, K votes.

For a batch of B clips and K votes per clip the sampler

1. encodes each clip once (``model.encode_audio`` on the clip's feature bucket, not 30 s);
2. prefills each clip's prompt once, left-padded to a prompt-length bucket, with per-row positions
   ``cumsum(mask) - 1``;
3. repeats the key/value cache K times along the batch (rows ``b * K + k``), never recomputing the
   prefix;
4. decodes the B * K rows inside ``jax.jit`` with ``lax.while_loop`` until every row has stopped or
   ``max_new_tokens`` tokens exist.

Shapes are fixed per (batch size, prompt bucket, feature bucket, sampling config), so after warm-up
nothing recompiles; :func:`compile_count` counts compilations (jit cache entries) for benchmarks.

Randomness never depends on a row's place in the batch: vote ``k`` of utterance ``u`` under prompt
``p`` uses ``fold_in(fold_in(fold_in(key(seed), hash(p)), hash(u)), k)``, folded again with the
step, so a clip sampled alone and inside a batch gets the same votes.

Stopping: a row stops at any id of ``eos_ids``. Stop strings are handled as token-level stop ids
plus a host-side trim: every token whose text contains a stop string stops the row in the loop, and
:meth:`Sampler.texts` cuts the decoded text at the first stop string (which also catches a stop
string spread over several tokens, at the price of decoding up to ``max_new_tokens``).

Exact scoring (:meth:`Sampler.score`) teacher-forces every label's token sequence followed by
``<|im_end|>`` as a batch of continuations of the shared, broadcast prefix and returns
``log P(answer == label)``. Constrained sampling walks a token trie of the same sequences.
The label strings are tokenized on their own, which is how they are tokenized after the assistant
turn's opening newline.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from perax.models import cache as kv_cache
from perax.raters import prompts

# Prompt lengths are padded up to the first bucket that holds them (30 s of audio is 750 tokens):
# steps of 32 tokens up to 256, of 64 up to 1024, then of 256. Prefill cost grows with the bucket,
# the number of compilations with the buckets a corpus reaches.
PROMPT_BUCKETS = tuple(range(64, 256, 32)) + tuple(range(256, 1024, 64)) + tuple(range(1024, 2049, 256))
END_OF_TURN = '<|im_end|>'
END_OF_TEXT = '<|endoftext|>'
NO_TOKEN = -1  # written after a row has stopped


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How votes are drawn; a static argument of the jitted decoder (one compilation per value).

  Attributes:
    votes_per_clip: K, rows decoded per clip from one prefill.
    max_new_tokens: tokens generated at most per vote.
    temperature: softmax temperature; 0 picks the most likely token (greedy).
    top_k: keep only the k most likely tokens; 0 keeps all.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p; 1 keeps all.
    eos_ids: token ids that end a vote (any of them); the stopping token is kept in the output.
    stop_ids: further ids that end a vote (tokens holding a stop string; :meth:`Sampler.config`).
    constrained: emit only label token sequences (each ends with ``<|im_end|>``).
  """

  votes_per_clip: int = 10
  max_new_tokens: int = 8
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_ids: tuple[int, ...] = ()
  stop_ids: tuple[int, ...] = ()
  constrained: bool = False

  def __post_init__(self):
    if self.votes_per_clip < 1:
      raise ValueError(f'votes_per_clip must be >= 1, got {self.votes_per_clip}')
    if self.max_new_tokens < 1:
      raise ValueError(f'max_new_tokens must be >= 1, got {self.max_new_tokens}')
    if self.temperature < 0:
      raise ValueError(f'temperature must be >= 0, got {self.temperature}')
    if self.top_k < 0:
      raise ValueError(f'top_k must be >= 0, got {self.top_k}')
    if not 0 < self.top_p <= 1:
      raise ValueError(f'top_p must be in (0, 1], got {self.top_p}')


@dataclasses.dataclass(frozen=True)
class LabelTokens:
  """The answers of a label set as token sequences, for scoring and constrained sampling.

  Attributes:
    labels: the label strings, in label-set order (C of them).
    ids: [C, T] int32, each label's tokens followed by ``<|im_end|>``, right-padded with 0.
    lengths: [C] int32 valid tokens per row of ``ids``.
    trie_tokens: [N, M] int32, node n's child tokens (-1 = none); node 0 is the root.
    trie_next: [N, M] int32, the node each child token leads to.
  """

  labels: tuple[str, ...]
  ids: np.ndarray
  lengths: np.ndarray
  trie_tokens: np.ndarray
  trie_next: np.ndarray

  @classmethod
  def build(cls, tokenizer, labels: Sequence[str]) -> LabelTokens:
    """Tokenizes each label (as the answer's first word) and builds the token trie.

    Raises:
      ValueError: two labels share a token sequence.
    """
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    sequences = [list(tokenizer(label, add_special_tokens=False)['input_ids']) + [end] for label in labels]
    if len({tuple(s) for s in sequences}) != len(sequences):
      raise ValueError(f'labels {list(labels)} do not all tokenize differently')
    width = max(map(len, sequences))
    ids = np.zeros((len(labels), width), np.int32)
    for row, sequence in enumerate(sequences):
      ids[row, : len(sequence)] = sequence
    children: list[dict[int, int]] = [{}]
    for sequence in sequences:
      node = 0
      for token in sequence:
        if token not in children[node]:
          children[node][token] = len(children)
          children.append({})
        node = children[node][token]
    fan_out = max(len(c) for c in children)
    trie_tokens = np.full((len(children), fan_out), -1, np.int32)
    trie_next = np.zeros((len(children), fan_out), np.int32)
    for node, edges in enumerate(children):
      trie_tokens[node, : len(edges)] = list(edges)
      trie_next[node, : len(edges)] = list(edges.values())
    return cls(tuple(labels), ids, np.asarray(list(map(len, sequences)), np.int32), trie_tokens, trie_next)


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


def prompt_bucket(length: int, buckets: Sequence[int] = PROMPT_BUCKETS) -> int:
  """The first bucket >= length; a length above every bucket rounds up to a multiple of the last."""
  for bucket in buckets:
    if length <= bucket:
      return bucket
  return -(-length // buckets[-1]) * buckets[-1]


def eos_token_ids(tokenizer) -> tuple[int, ...]:
  """Ids that end an answer: the end-of-turn and end-of-text tokens the tokenizer has."""
  vocab = tokenizer.get_vocab()
  return tuple(vocab[token] for token in (END_OF_TURN, END_OF_TEXT) if token in vocab)


def stop_token_ids(tokenizer, stop_strings: Sequence[str]) -> tuple[int, ...]:
  """Ids of every vocabulary token whose text contains one of ``stop_strings``."""
  if not stop_strings:
    return ()
  decoded = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
  return tuple(i for i, text in enumerate(decoded) if any(s in text for s in stop_strings))


class Sampler:
  """Votes and label scores for fixed-size batches of clips.

  Args:
    model: a perax Qwen2AudioForConditionalGeneration (Flax NNX).
    tokenizer: the checkpoint's tokenizer (decodes votes, tokenizes labels).
    batch_size: B, clips per call (fewer clips are padded by repeating the first one).
    prompt_buckets: prompt lengths, in tokens, that inputs are left-padded to.
    mesh: shard the batch over this mesh's 'data' axis (B must divide evenly); None = no sharding.
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
    if mesh is not None and batch_size % mesh.shape['data']:
      raise ValueError(
        f"batch_size {batch_size} is not a multiple of the mesh's data axis ({mesh.shape['data']} devices)"
      )
    self.tokenizer = tokenizer
    self.batch_size = batch_size
    self.prompt_buckets = tuple(prompt_buckets)
    self.mesh = mesh
    self.model_config = model.config
    self._graphdef, state = nnx.split(model)
    self._state = self._replicate(state)

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
    embeds, valid = _encode(
      self._graphdef,
      self._state,
      self._shard(np.asarray(features, np.float32)),
      self._shard(np.asarray(feature_lengths, np.int32)),
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
      trie = (label_tokens.trie_tokens, label_tokens.trie_next)
    else:
      trie = (np.full((1, 1), -1, np.int32), np.zeros((1, 1), np.int32))
    ids, mask = self._pad_prompts(prompt_ids)
    self._check_rows(len(utt_ids), 'utt_ids')
    utt_hashes = np.asarray([stable_hash(u) for u in utt_ids], np.uint32)
    tokens = _sample(
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
      *map(np.asarray, trie),
      config=config,
    )
    return np.asarray(tokens).reshape(self.batch_size, config.votes_per_clip, -1)

  def score(
    self, audio: EncodedAudio, prompt_ids: Sequence[np.ndarray], label_tokens: LabelTokens
  ) -> np.ndarray:
    """log P(answer == label followed by <|im_end|>) per clip and label.

    Returns:
      [B, C] float32 log-probabilities (not normalised over the label set; see
      :func:`normalise`).
    """
    ids, mask = self._pad_prompts(prompt_ids)
    logp = _score(
      self._graphdef,
      self.model_config,
      self._state,
      audio.embeds,
      audio.valid,
      self._shard(ids),
      self._shard(mask),
      label_tokens.ids,
      label_tokens.lengths,
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
    length = prompt_bucket(max(len(p) for p in prompt_ids), self.prompt_buckets)
    ids = np.zeros((len(prompt_ids), length), np.int32)
    mask = np.zeros((len(prompt_ids), length), bool)
    for row, prompt in enumerate(prompt_ids):
      ids[row, length - len(prompt) :] = prompt
      mask[row, length - len(prompt) :] = True
    return ids, mask

  def _check_rows(self, rows: int, what: str) -> None:
    if rows != self.batch_size:
      raise ValueError(
        f'{what} has {rows} rows; the sampler runs batches of {self.batch_size} (pad with pad_rows)'
      )

  def _shard(self, array: np.ndarray) -> jax.Array | np.ndarray:
    if self.mesh is None:
      return array
    return jax.device_put(array, NamedSharding(self.mesh, PartitionSpec('data')))

  def _replicate(self, state):
    if self.mesh is None:
      return state
    return jax.device_put(state, NamedSharding(self.mesh, PartitionSpec()))


def compile_count() -> int:
  """Compilations so far in this process: entries in the jit caches of encode, sample and score.

  The jitted functions are shared by all samplers, so a second sampler over the same model
  architecture, shapes and shardings reuses the first one's compilations.
  """
  jitted = (_encode, _sample, _score)
  return sum(fn._cache_size() for fn in jitted)  # pylint: disable=protected-access


def pad_rows(items: Sequence, batch_size: int) -> list:
  """``items`` padded to ``batch_size`` by repeating the first item (padded rows are discarded)."""
  if not items or len(items) > batch_size:
    raise ValueError(f'need 1..{batch_size} items, got {len(items)}')
  return list(items) + [items[0]] * (batch_size - len(items))


def normalise(logp: np.ndarray) -> np.ndarray:
  """[N, C] label log-probabilities -> [N, C] float64 distribution over the label set (softmax)."""
  logp = np.asarray(logp, np.float64)
  shifted = logp - logp.max(axis=-1, keepdims=True)
  p = np.exp(shifted)
  return p / p.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------------
# Jitted bodies. The model's graphdef and config are static (hashable) arguments and its state an
# ordinary one, so the jit cache is keyed by architecture and shapes, never by the weights.


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, features, feature_lengths):
  model = nnx.merge(graphdef, state)
  return model.encode_audio(features, feature_lengths)


def _prefill(model, model_config, embeds, valid, ids, mask, room: int):
  """Runs the left-padded prompts through the decoder once.

  Returns:
    last_logits [B, V] float32 (next-token logits after each prompt), the cache ([B] rows,
    ``L + room`` slots, index L), and positions [B] int32 of each prompt's last token.
  """
  batch, length = ids.shape
  inputs_embeds = model.merge_audio(ids, embeds, valid)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)
  cache = kv_cache.init_cache(model_config, batch, length + room, inputs_embeds.dtype)
  out = model(
    inputs_embeds=inputs_embeds,
    positions=positions,
    attention_mask=mask,
    cache=cache,
    logits_at=jnp.full((batch, 1), length - 1, jnp.int32),
  )
  return out.logits[:, 0], out.cache, positions[:, -1]


def _repeat_rows(cache: kv_cache.KVCache, times: int) -> kv_cache.KVCache:
  """Repeats each cache row ``times`` times: row b becomes rows b * times to (b + 1) * times - 1."""

  def repeat(x):
    return jnp.repeat(x, times, axis=0)

  return cache.replace(
    keys=tuple(map(repeat, cache.keys)), values=tuple(map(repeat, cache.values)), mask=repeat(cache.mask)
  )


def _filter_logits(logits, config: SamplingConfig):
  """Temperature, top-k and top-p applied to [N, V] logits (removed tokens get -inf)."""
  logits = logits / config.temperature
  if config.top_k:
    kth = jax.lax.top_k(logits, config.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if config.top_p < 1:
    ordered = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = jnp.sum(mass_before < config.top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(ordered, keep - 1, axis=-1)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def _choose(logits, keys, config: SamplingConfig, allowed):
  """Picks one token per row of [N, V] logits; ``allowed`` [N, V] bool or None."""
  if allowed is not None:
    logits = jnp.where(allowed, logits, -jnp.inf)
  if config.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  probs = jax.nn.softmax(_filter_logits(logits, config), axis=-1)
  cdf = jnp.cumsum(probs, axis=-1)
  # Inverse-CDF sampling: one uniform per row, the first token whose cumulative mass exceeds it.
  u = jax.vmap(lambda key: jax.random.uniform(key))(keys) * cdf[:, -1]
  token = jnp.sum(cdf <= u[:, None], axis=-1)
  return jnp.minimum(token, logits.shape[-1] - 1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames='config')
def _sample(
  graphdef,
  model_config,
  state,
  embeds,
  valid,
  ids,
  mask,
  utt_hashes,
  seed,
  prompt_hash,
  trie_tokens,
  trie_next,
  *,
  config: SamplingConfig,
):
  """Prefill once per clip, then K votes per clip in a while loop; returns [B*K, T] int32 tokens."""
  model = nnx.merge(graphdef, state)
  votes, steps = config.votes_per_clip, config.max_new_tokens
  last_logits, cache, last_position = _prefill(model, model_config, embeds, valid, ids, mask, room=steps)
  rows = last_logits.shape[0] * votes
  cache = _repeat_rows(cache, votes)
  logits = jnp.repeat(last_logits, votes, axis=0)
  last_position = jnp.repeat(last_position, votes, axis=0)

  base = jax.random.fold_in(jax.random.key(seed), prompt_hash)
  vote_index = jnp.tile(jnp.arange(votes, dtype=jnp.uint32), last_logits.shape[0])
  row_keys = jax.vmap(lambda u, k: jax.random.fold_in(jax.random.fold_in(base, u), k))(
    jnp.repeat(utt_hashes, votes), vote_index
  )
  stop_ids = jnp.asarray(config.eos_ids + config.stop_ids, jnp.int32)
  vocab = logits.shape[-1]

  def allowed_at(node):
    if not config.constrained:
      return None
    children = jnp.where(trie_tokens[node] >= 0, trie_tokens[node], vocab)
    return jnp.zeros((rows, vocab), bool).at[jnp.arange(rows)[:, None], children].set(True, mode='drop')

  def advance(node, token):
    if not config.constrained:
      return node
    hit = trie_tokens[node] == token[:, None]
    return jnp.sum(jnp.where(hit, trie_next[node], 0), axis=-1)

  def pick(step, logits, node, done):
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
    token = _choose(logits, keys, config, allowed_at(node))
    token = jnp.where(done, NO_TOKEN, token)
    node = advance(node, token)
    stopped = done | jnp.isin(token, stop_ids)
    if config.constrained:  # a trie leaf: the label and <|im_end|> are complete
      stopped = stopped | (jnp.max(trie_tokens[node], axis=-1) < 0)
    return token, node, stopped

  node = jnp.zeros((rows,), jnp.int32)
  first, node, done = pick(0, logits, node, jnp.zeros((rows,), bool))
  tokens = jnp.full((rows, steps), NO_TOKEN, jnp.int32).at[:, 0].set(first)

  def cond(carry):
    step, _, done, _, _ = carry
    return (step < steps) & ~jnp.all(done)

  def body(carry):
    step, tokens, done, node, cache = carry
    previous = jnp.maximum(tokens[:, step - 1], 0)[:, None]
    positions = (last_position + step)[:, None]
    out = model(
      input_ids=previous, positions=positions, attention_mask=jnp.ones((rows, 1), bool), cache=cache
    )
    token, node, done = pick(step, out.logits[:, -1].astype(jnp.float32), node, done)
    return step + 1, tokens.at[:, step].set(token), done, node, out.cache

  _, tokens, _, _, _ = jax.lax.while_loop(cond, body, (1, tokens, done, node, cache))
  return tokens


@functools.partial(jax.jit, static_argnums=(0, 1))
def _score(graphdef, model_config, state, embeds, valid, ids, mask, label_ids, label_lengths):
  """Teacher-forces every label after each prompt; returns [B, C] log P(label tokens)."""
  model = nnx.merge(graphdef, state)
  labels, width = label_ids.shape
  last_logits, cache, last_position = _prefill(model, model_config, embeds, valid, ids, mask, room=width)
  batch = last_logits.shape[0]
  cache = _repeat_rows(cache, labels)
  continuation = jnp.tile(label_ids, (batch, 1))
  valid_tokens = jnp.arange(width)[None, :] < jnp.tile(label_lengths, batch)[:, None]
  positions = jnp.repeat(last_position, labels)[:, None] + 1 + jnp.arange(width)[None, :]
  logits = model(input_ids=continuation, positions=positions, attention_mask=valid_tokens, cache=cache).logits
  # Token t of a label is predicted by the prompt's last logits (t = 0) or the label's token t - 1.
  predicting = jnp.concatenate(
    [jnp.repeat(last_logits, labels, axis=0)[:, None], logits[:, :-1].astype(jnp.float32)], axis=1
  )
  logp = jnp.take_along_axis(jax.nn.log_softmax(predicting, axis=-1), continuation[..., None], axis=-1)[
    ..., 0
  ]
  return jnp.sum(jnp.where(valid_tokens, logp, 0.0), axis=-1).reshape(batch, labels)
