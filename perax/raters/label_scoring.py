"""A label set as token sequences: the trie for constrained votes, and exact label scores.

Exact scoring (:func:`score_labels`) teacher-forces every label's token sequence followed by
``<|im_end|>`` as C continuations of each clip's prompt, all reading ONE copy of the prompt's cache
(perax.models.cache.shared_prefix_cache), and returns ``log P(answer == label)``. Constrained sampling
(perax.raters.decoding.sample_votes) walks a :class:`perax.raters.decoding.TokenTrie` of the same
sequences. The label strings are tokenized on their own, which is how they are tokenized after the
assistant turn's opening newline.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from perax.models import activation_sharding
from perax.models import cache as kv_cache
from perax.raters import decoding


@dataclasses.dataclass(frozen=True)
class LabelTokens:
  """The answers of a label set as token sequences, for scoring and constrained sampling.

  Attributes:
    labels: the label strings, in label-set order (C of them).
    ids: ``[C, T]`` int32, each label's tokens followed by ``<|im_end|>``, right-padded with 0.
    lengths: ``[C]`` int32 valid tokens per row of ``ids``.
    trie: the sequences as a :class:`perax.raters.decoding.TokenTrie`.
  """

  labels: tuple[str, ...]
  ids: np.ndarray
  lengths: np.ndarray
  trie: decoding.TokenTrie

  @classmethod
  def build(cls, tokenizer, labels: Sequence[str]) -> LabelTokens:
    """Tokenizes each label (as the answer's first word) and builds the token trie.

    Raises:
      ValueError: two labels share a token sequence.
    """
    end = tokenizer.convert_tokens_to_ids(decoding.END_OF_TURN)
    sequences = [list(tokenizer(label, add_special_tokens=False)['input_ids']) + [end] for label in labels]
    if len({tuple(s) for s in sequences}) != len(sequences):
      raise ValueError(f'labels {list(labels)} do not all tokenize differently')
    width = max(map(len, sequences))
    ids = np.zeros((len(labels), width), np.int32)
    for row, sequence in enumerate(sequences):
      ids[row, : len(sequence)] = sequence
    lengths = np.asarray(list(map(len, sequences)), np.int32)
    return cls(tuple(labels), ids, lengths, decoding.TokenTrie.build(sequences))


def normalise(logp: np.ndarray) -> np.ndarray:
  """``[N, C]`` label log-probabilities -> ``[N, C]`` float64 distribution over the label set (softmax)."""
  logp = np.asarray(logp, np.float64)
  shifted = logp - logp.max(axis=-1, keepdims=True)
  p = np.exp(shifted)
  return p / p.sum(axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames='mesh')
@activation_sharding.traced_in_mesh_argument
def score_labels(
  graphdef,
  model_config,
  state,
  embeds,
  valid,
  ids,
  mask,
  label_ids,
  label_lengths,
  *,
  mesh: Mesh | None = None,
):
  """Teacher-forces every label after each prompt.

  Args:
    graphdef, model_config, state: the model split by ``nnx.split``.
    embeds, valid: encoded audio ``[B, A, H]``, ``[B, A]``.
    ids, mask: ``[B, L]`` left-padded prompts.
    label_ids, label_lengths: ``[C, T]`` and ``[C]`` from :class:`LabelTokens`.
    mesh: shard batch and caches over this mesh (static; None: unsharded).

  Returns:
    ``[B, C]`` float32 ``log P(label tokens | prompt)`` (not normalised over the label set).
  """
  model = nnx.merge(graphdef, state)
  labels, width = label_ids.shape
  last_logits, prompt_cache, last_position = decoding.prefill(
    model, model_config, embeds, valid, ids, mask, mesh
  )
  batch = last_logits.shape[0]
  cache = decoding.constrain_cache(kv_cache.shared_prefix_cache(prompt_cache, labels, width), mesh)
  continuation = jnp.tile(label_ids, (batch, 1))
  valid_tokens = jnp.arange(width)[None, :] < jnp.tile(label_lengths, batch)[:, None]
  positions = jnp.repeat(last_position, labels)[:, None] + 1 + jnp.arange(width)[None, :]
  logits = model(input_ids=continuation, positions=positions, attention_mask=valid_tokens, cache=cache).logits
  # Token t of a label is predicted by the prompt's last logits (t = 0) or the label's token t - 1.
  predicting = jnp.concatenate(
    [jnp.repeat(last_logits, labels, axis=0)[:, None], logits[:, :-1].astype(jnp.float32)], axis=1
  )
  logp = jax.nn.log_softmax(predicting, axis=-1)
  picked = jnp.take_along_axis(logp, continuation[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(valid_tokens, picked, 0.0), axis=-1).reshape(batch, labels)
