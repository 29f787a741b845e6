"""Fixed-shape decoding from Qwen2-Audio: prompt buckets, prefill, shared-prefix caches, the vote loop.

For B clips and R rows per clip (K votes, or C label continuations in perax.raters.label_scoring):

1. :func:`prefill` runs each clip's left-padded prompt once (positions ``cumsum(mask) - 1``) into a
   cache of exactly the prompt's slots;
2. :func:`perax.models.cache.shared_prefix_cache` gives the R rows of a clip ONE copy of that prompt
   cache plus a small suffix cache each (the prefix is never repeated; attention over
   [prefix ; suffix] is one exact softmax, perax.models.qwen2.shared_prefix_attention);
3. :func:`sample_votes` decodes the B * R rows inside ``jax.jit`` with ``lax.while_loop`` over a
   :class:`DecodeState`, until every row has stopped or ``max_new_tokens`` tokens exist.

Shapes are fixed per (batch, prompt bucket, audio bucket, sampling config), so nothing recompiles after
warm-up. With a mesh, the batch of every input, cache and state is split over the mesh's 'data' and
'fsdp' axes and key/value heads over 'tensor' (perax.models.sharding's rules); the weights are placed by
the same rules by the caller (perax.raters.sampler.Sampler).

Randomness: row ``b * K + k`` uses ``fold_in(fold_in(fold_in(key(seed), prompt_hash), utt_hash[b]), k)``,
folded again with the step, so a clip's votes do not depend on its place in the batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from perax.models import activation_sharding, sharding
from perax.models import cache as kv_cache

# Prompt lengths are padded up to the first bucket that holds them. One bucket per audio feature
# bucket (2, 4, 8, 16, 30 s hold at most 50, 100, 200, 400, 750 audio tokens), with 128 tokens or more
# for the text, then coarse steps for long transcripts; above the last, multiples of it. A batch's
# bucket is its longest prompt's, so finer buckets are rarely reached and each one reached costs a
# compilation per feature bucket and program (about 13 s at 7B) to save a few percent of prefill:
# for clips of 0.5-30 s in batches of 8 the 23 buckets used before reach 14 (feature, prompt) pairs
# with 22% prefill padding, these 6 pairs with 30% (notes of issue 13, item 4).
PROMPT_BUCKETS = (192, 256, 352, 544, 896, 1024, 1280, 1536, 2048)
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
    stop_ids: further ids that end a vote (tokens holding a stop string; see :func:`stop_token_ids`).
    constrained: emit only the token sequences of a :class:`TokenTrie` (each ends a vote at its leaf).
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
class TokenTrie:
  """A set of token sequences as a trie, for constrained decoding.

  Attributes:
    tokens: ``[N, M]`` int32, node n's child tokens (-1 = none); node 0 is the root.
    next: ``[N, M]`` int32, the node each child token leads to. A node without children is a leaf:
      a whole sequence has been emitted.
  """

  tokens: np.ndarray
  next: np.ndarray

  @classmethod
  def build(cls, sequences: Sequence[Sequence[int]]) -> TokenTrie:
    children: list[dict[int, int]] = [{}]
    for sequence in sequences:
      node = 0
      for token in sequence:
        if token not in children[node]:
          children[node][token] = len(children)
          children.append({})
        node = children[node][token]
    fan_out = max(1, max(len(c) for c in children))
    tokens = np.full((len(children), fan_out), -1, np.int32)
    following = np.zeros((len(children), fan_out), np.int32)
    for node, edges in enumerate(children):
      tokens[node, : len(edges)] = list(edges)
      following[node, : len(edges)] = list(edges.values())
    return cls(tokens, following)

  @classmethod
  def unconstrained(cls) -> TokenTrie:
    """A placeholder trie (one childless root) for unconstrained sampling."""
    return cls(np.full((1, 1), -1, np.int32), np.zeros((1, 1), np.int32))


class DecodeState(NamedTuple):
  """The vote loop's carry (R = B * K rows, T = max_new_tokens).

  Attributes:
    step: int32 scalar, the index of the next token to choose (tokens ``< step`` are written).
    tokens: ``[R, T]`` int32 chosen tokens; NO_TOKEN after a row's stopping token and beyond step.
    done: ``[R]`` bool, the row has emitted a stopping token (or reached a trie leaf).
    node: ``[R]`` int32 trie node after the row's tokens (0 when unconstrained).
    cache: the shared-prefix cache (perax.models.cache), suffix slots ``< step - 1`` written.
  """

  step: jax.Array
  tokens: jax.Array
  done: jax.Array
  node: jax.Array
  cache: kv_cache.KVCache


def prompt_bucket(length: int, buckets: Sequence[int] = PROMPT_BUCKETS) -> int:
  """The first bucket >= length; a length above every bucket rounds up to a multiple of the last."""
  for bucket in buckets:
    if length <= bucket:
      return bucket
  return -(-length // buckets[-1]) * buckets[-1]


def pad_prompts(prompt_ids: Sequence[np.ndarray], buckets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads B prompts to their bucket: ids ``[B, L]`` int32 and mask ``[B, L]`` bool."""
  length = prompt_bucket(max(len(p) for p in prompt_ids), buckets)
  ids = np.zeros((len(prompt_ids), length), np.int32)
  mask = np.zeros((len(prompt_ids), length), bool)
  for row, prompt in enumerate(prompt_ids):
    ids[row, length - len(prompt) :] = prompt
    mask[row, length - len(prompt) :] = True
  return ids, mask


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


# ------------------------------------------------------------------------------------------------
# Sharding of activations and caches inside the jitted programs (a no-op without a mesh).


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
  """The batch (first) axis split over the mesh's 'data' and 'fsdp' axes, the rest replicated."""
  axes = ('batch',) + (None,) * (len(shape) - 1)
  return NamedSharding(mesh, sharding.partition_spec(axes, shape, mesh))


def constrain_batch(x: jax.Array, mesh: Mesh | None) -> jax.Array:
  return x if mesh is None else jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.shape))


def constrain_cache(cache: kv_cache.KVCache, mesh: Mesh | None) -> kv_cache.KVCache:
  """The cache constrained to perax.models.cache.cache_shardings (None: unconstrained)."""
  if mesh is None:
    return cache
  return jax.lax.with_sharding_constraint(cache, kv_cache.cache_shardings(cache, mesh))


# ------------------------------------------------------------------------------------------------
# Jitted pieces. The model's graphdef and config are static (hashable) arguments and its state an
# ordinary one, so the jit cache is keyed by architecture, shapes and mesh, never by the weights.


@functools.partial(jax.jit, static_argnums=0, static_argnames='mesh')
@activation_sharding.traced_in_mesh_argument
def encode(graphdef, state, features, feature_lengths, *, mesh: Mesh | None = None):
  """``model.encode_audio``: ``[B, 128, F]`` features -> (``[B, F // 4, H]`` embeds, ``[B, F // 4]`` valid).

  ``mesh`` (static) is the mesh the inputs are split over; the activation constraints follow it.
  """
  model = nnx.merge(graphdef, state)
  return model.encode_audio(features, feature_lengths)


def prefill(model, model_config, embeds, valid, ids, mask, mesh: Mesh | None = None):
  """Runs the left-padded prompts through the decoder once.

  Args:
    model: the merged model; model_config its config.
    embeds, valid: the clips' encoded audio ``[B, A, H]`` and ``[B, A]``.
    ids, mask: ``[B, L]`` left-padded prompt ids and their validity.
    mesh: constrain the cache's shardings to this mesh (None: no constraint).

  Returns:
    last_logits ``[B, V]`` float32 (next-token logits after each prompt), the prompt cache (``[B]``
    rows, exactly ``L`` slots, index L), and positions ``[B]`` int32 of each prompt's last token.
  """
  batch, length = ids.shape
  inputs_embeds = constrain_batch(model.merge_audio(ids, embeds, valid), mesh)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)
  cache = constrain_cache(kv_cache.init_cache(model_config, batch, length, inputs_embeds.dtype), mesh)
  out = model(
    inputs_embeds=inputs_embeds,
    positions=positions,
    attention_mask=mask,
    cache=cache,
    logits_at=jnp.full((batch, 1), length - 1, jnp.int32),
  )
  return out.logits[:, 0], constrain_cache(out.cache, mesh), positions[:, -1]


def filter_logits(logits, config: SamplingConfig):
  """Temperature, top-k and top-p applied to ``[N, V]`` logits (removed tokens get -inf)."""
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


def choose(logits, keys, config: SamplingConfig, allowed):
  """Picks one token per row of ``[N, V]`` logits; ``allowed`` ``[N, V]`` bool or None."""
  if allowed is not None:
    logits = jnp.where(allowed, logits, -jnp.inf)
  if config.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  probs = jax.nn.softmax(filter_logits(logits, config), axis=-1)
  cdf = jnp.cumsum(probs, axis=-1)
  # Inverse-CDF sampling: one uniform per row, the first token whose cumulative mass exceeds it.
  u = jax.vmap(lambda key: jax.random.uniform(key))(keys) * cdf[:, -1]
  token = jnp.sum(cdf <= u[:, None], axis=-1)
  return jnp.minimum(token, logits.shape[-1] - 1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=('config', 'mesh'))
@activation_sharding.traced_in_mesh_argument
def sample_votes(
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
  mesh: Mesh | None = None,
):
  """Prefill once per clip, then K votes per clip in a while loop over a shared-prefix cache.

  Args:
    graphdef, model_config, state: the model split by ``nnx.split`` (graphdef and config static).
    embeds, valid: encoded audio ``[B, A, H]``, ``[B, A]``.
    ids, mask: ``[B, L]`` left-padded prompts.
    utt_hashes: ``[B]`` uint32 utterance hashes; seed, prompt_hash: uint32 scalars.
    trie_tokens, trie_next: a :class:`TokenTrie`'s arrays (used when ``config.constrained``).
    config: sampling configuration (static).
    mesh: shard batch, cache and state over this mesh (static; None: unsharded).

  Returns:
    ``[B * K, T]`` int32 tokens, row ``b * K + k`` vote k of clip b; NO_TOKEN after a row stopped.
  """
  model = nnx.merge(graphdef, state)
  votes, steps = config.votes_per_clip, config.max_new_tokens
  last_logits, prompt_cache, last_position = prefill(model, model_config, embeds, valid, ids, mask, mesh)
  batch = last_logits.shape[0]
  rows = batch * votes
  # Tokens 1..steps-1 are fed back: the suffix needs steps - 1 slots (at least one).
  cache = constrain_cache(kv_cache.shared_prefix_cache(prompt_cache, votes, max(steps - 1, 1)), mesh)
  logits = constrain_batch(jnp.repeat(last_logits, votes, axis=0), mesh)
  last_position = jnp.repeat(last_position, votes, axis=0)

  base = jax.random.fold_in(jax.random.key(seed), prompt_hash)
  vote_index = jnp.tile(jnp.arange(votes, dtype=jnp.uint32), batch)
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
    token = choose(logits, keys, config, allowed_at(node))
    token = jnp.where(done, NO_TOKEN, token)
    node = advance(node, token)
    stopped = done | jnp.isin(token, stop_ids)
    if config.constrained:  # a trie leaf: the whole sequence has been emitted
      stopped = stopped | (jnp.max(trie_tokens[node], axis=-1) < 0)
    return token, node, stopped

  first, node, done = pick(0, logits, jnp.zeros((rows,), jnp.int32), jnp.zeros((rows,), bool))
  tokens = jnp.full((rows, steps), NO_TOKEN, jnp.int32).at[:, 0].set(first)
  start = DecodeState(step=jnp.ones((), jnp.int32), tokens=tokens, done=done, node=node, cache=cache)

  def cond(state: DecodeState):
    return (state.step < steps) & ~jnp.all(state.done)

  def body(state: DecodeState) -> DecodeState:
    previous = jnp.maximum(state.tokens[:, state.step - 1], 0)[:, None]
    positions = (last_position + state.step)[:, None]
    out = model(
      input_ids=previous, positions=positions, attention_mask=jnp.ones((rows, 1), bool), cache=state.cache
    )
    token, node, done = pick(state.step, out.logits[:, -1].astype(jnp.float32), state.node, state.done)
    return DecodeState(
      step=state.step + 1,
      tokens=state.tokens.at[:, state.step].set(token),
      done=done,
      node=node,
      cache=constrain_cache(out.cache, mesh),
    )

  return jax.lax.while_loop(cond, body, start).tokens
