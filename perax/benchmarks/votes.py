"""Votes per second: perax's sampler against HF ``generate(num_return_sequences=K)``, in one run.

Both run the same random Qwen2-Audio checkpoint (written by perax.models.tiny with the sizes below)
on the same clips and prompt, float32 on CPU, warm (perax's compilation and torch's first call are
excluded), timed from waveforms to K token sequences per clip:

- HF: the processor (every clip padded to 30 s) and ``generate``, which expands the inputs K times
  before prefill: K encodes of 30 s and K prefills per clip;
- perax: log-mel features in the clip's bucket, prompt ids, one encode and one prefill per clip, K
  decoded rows from the broadcast cache.

Also timed: perax's exact score mode (all labels' probabilities per clip) relative to sampling one
vote per clip. The last line printed is
``votes/s perax=<x> hf=<y> ratio=<r> compiles_after_warmup=<n>``.

Flags (all prefixed ``votes_``): batch_size, k, new_tokens, clip_seconds, audio_d_model,
audio_layers, audio_heads, audio_ffn, hidden, layers, heads, kv_heads, intermediate, repeats,
hf_repeats, threads, seed.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
from absl import flags

from perax.data import features
from perax.models import loading
from perax.models.tiny import make_tiny_checkpoint
from perax.raters import prompts
from perax.raters import sampler as sampler_lib

_BATCH_SIZE = flags.DEFINE_integer('votes_batch_size', 8, 'Clips per batch.')
_K = flags.DEFINE_integer('votes_k', 10, 'Votes per clip.')
_NEW_TOKENS = flags.DEFINE_integer('votes_new_tokens', 4, 'Tokens generated per vote.')
_CLIP_SECONDS = flags.DEFINE_float('votes_clip_seconds', 5.0, 'Clip duration in seconds.')
_AUDIO_D_MODEL = flags.DEFINE_integer('votes_audio_d_model', 256, 'Audio encoder width.')
_AUDIO_LAYERS = flags.DEFINE_integer('votes_audio_layers', 4, 'Audio encoder layers.')
_AUDIO_HEADS = flags.DEFINE_integer('votes_audio_heads', 4, 'Audio encoder attention heads.')
_AUDIO_FFN = flags.DEFINE_integer('votes_audio_ffn', 1024, 'Audio encoder feed-forward width.')
_HIDDEN = flags.DEFINE_integer('votes_hidden', 512, 'Decoder width.')
_LAYERS = flags.DEFINE_integer('votes_layers', 6, 'Decoder layers.')
_HEADS = flags.DEFINE_integer('votes_heads', 8, 'Decoder query heads.')
_KV_HEADS = flags.DEFINE_integer('votes_kv_heads', 2, 'Decoder key/value heads.')
_INTERMEDIATE = flags.DEFINE_integer('votes_intermediate', 1536, 'Decoder MLP width.')
_REPEATS = flags.DEFINE_integer('votes_repeats', 10, 'Timed perax batches (best reported).')
_HF_REPEATS = flags.DEFINE_integer('votes_hf_repeats', 2, 'Timed HF batches (best reported).')
_THREADS = flags.DEFINE_integer('votes_threads', 2, 'torch CPU threads.')
_SEED = flags.DEFINE_integer('votes_seed', 0, 'Seed of the weights, clips and votes.')

LABELS = ('neutral', 'happy', 'sad', 'angry')
SAMPLE_RATE = features.SAMPLE_RATE


def _best_seconds(fns: dict, repeats: int) -> dict:
  """Best (minimum) wall time of each function over ``repeats`` turns.

  The functions take turns, so changes in the machine's load hit all alike; the minimum is the
  usual estimate of a function's own cost when other processes share the CPU.
  """
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: min(values) for name, values in times.items()}


def run() -> dict:
  """Runs the benchmark with the flags' setup, prints the figures and returns them."""
  # The HF baseline needs torch, a test extra: imported here so that other benchmarks do without.
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(_THREADS.value)
  batch, votes, new_tokens = _BATCH_SIZE.value, _K.value, _NEW_TOKENS.value
  with tempfile.TemporaryDirectory() as checkpoint:
    make_tiny_checkpoint(
      checkpoint,
      seed=_SEED.value,
      d_model=_AUDIO_D_MODEL.value,
      encoder_layers=_AUDIO_LAYERS.value,
      encoder_attention_heads=_AUDIO_HEADS.value,
      encoder_ffn_dim=_AUDIO_FFN.value,
      hidden_size=_HIDDEN.value,
      num_hidden_layers=_LAYERS.value,
      num_attention_heads=_HEADS.value,
      num_key_value_heads=_KV_HEADS.value,
      intermediate_size=_INTERMEDIATE.value,
    )
    processor = loading.load_processor(checkpoint)
    hf_model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
      checkpoint, dtype=torch.float32
    ).eval()
    model, _, _ = loading.load_model(checkpoint, with_processor=False)

  rng = np.random.default_rng(_SEED.value)
  clips = [
    (0.1 * rng.normal(size=int(_CLIP_SECONDS.value * SAMPLE_RATE))).astype(np.float32) for _ in range(batch)
  ]
  text = prompts.render_chat(processor, prompts.load_prompts()[0].question(LABELS))
  eos = sampler_lib.eos_token_ids(processor.tokenizer)
  print(
    f'setup: {batch} clips of {_CLIP_SECONDS.value} s, K={votes}, {new_tokens} new tokens; '
    f'audio encoder d_model {_AUDIO_D_MODEL.value} x {_AUDIO_LAYERS.value} layers, decoder '
    f'hidden {_HIDDEN.value} x {_LAYERS.value} layers, {_HEADS.value}/{_KV_HEADS.value} heads'
  )

  def hf_votes(k):
    inputs = processor(
      text=[text] * batch, audio=clips, sampling_rate=SAMPLE_RATE, return_tensors='pt', padding=True
    )
    with torch.no_grad():
      return hf_model.generate(
        **inputs,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        num_return_sequences=k,
        max_new_tokens=new_tokens,
        eos_token_id=list(eos),
        pad_token_id=eos[-1],
      )

  sampler = sampler_lib.Sampler(model, processor.tokenizer, batch_size=batch)
  encoder = prompts.PromptEncoder(processor)
  bucket = features.bucket_for(max(len(c) for c in clips))
  label_tokens = sampler_lib.LabelTokens.build(processor.tokenizer, LABELS)
  seeds = iter(range(_SEED.value, _SEED.value + 1_000_000))

  def encoded_batch():
    encoded = sampler.encode(*features.batch_features(clips, bucket))
    return encoded, [encoder.ids(text, int(n)) for n in encoded.num_tokens]

  def perax_votes(k):
    config = sampler.config(votes_per_clip=k, max_new_tokens=new_tokens, temperature=1.0, eos_ids=eos)
    encoded, prompt_ids = encoded_batch()
    return sampler.sample(
      encoded,
      prompt_ids,
      config,
      seed=next(seeds),
      utt_ids=[f'clip{i}' for i in range(batch)],
      prompt_id='direct',
    )

  def perax_scores():
    encoded, prompt_ids = encoded_batch()
    return sampler.score(encoded, prompt_ids, label_tokens)

  for warm_up in (lambda: perax_votes(votes), lambda: perax_votes(1), perax_scores):
    warm_up()
  compiles_warm = sampler_lib.compile_count()
  perax_times = _best_seconds(
    {'votes': lambda: perax_votes(votes), 'one_vote': lambda: perax_votes(1), 'score': perax_scores},
    _REPEATS.value,
  )
  perax_s, one_vote_s, score_s = (perax_times[k] for k in ('votes', 'one_vote', 'score'))
  compiles_after = sampler_lib.compile_count() - compiles_warm

  hf_votes(1)  # torch's first call (allocations, kernel selection)
  hf_s = _best_seconds({'votes': lambda: hf_votes(votes)}, _HF_REPEATS.value)['votes']

  perax_rate, hf_rate = batch * votes / perax_s, batch * votes / hf_s
  print(
    f'perax: {perax_s:.3f} s per batch of {batch * votes} votes ({bucket} s feature bucket, '
    f'one encode and prefill per clip)'
  )
  print(
    f'hf:    {hf_s:.3f} s per batch of {batch * votes} votes (30 s features, K encodes and prefills per clip)'
  )
  print(
    f'score mode: {score_s:.3f} s per batch ({len(LABELS)} labels) = '
    f'{score_s / one_vote_s:.2f} x sampling one vote per clip ({one_vote_s:.3f} s), '
    f'{score_s / perax_s:.2f} x sampling K={votes}'
  )
  result = {
    'perax_votes_per_s': perax_rate,
    'hf_votes_per_s': hf_rate,
    'ratio': perax_rate / hf_rate,
    'compiles_after_warmup': compiles_after,
    'score_over_one_vote': score_s / one_vote_s,
  }
  print(
    f'votes/s perax={perax_rate:.2f} hf={hf_rate:.2f} ratio={perax_rate / hf_rate:.1f} '
    f'compiles_after_warmup={compiles_after}'
  )
  return result
