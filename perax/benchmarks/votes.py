"""Votes per second: perax's sampler against HF ``generate(num_return_sequences=K)``, in one run.

Both run the same random Qwen2-Audio checkpoint (written by perax.models.tiny with the sizes below)
on the same clips and prompt, float32 on CPU, warm (perax's compilation and torch's first call are
excluded), timed from waveforms to K token sequences per clip:

- HF: the processor (every clip padded to 30 s) and ``generate``, which expands the inputs K times
  before prefill: K encodes of 30 s and K prefills per clip;
- perax: log-mel features in the clip's bucket, prompt ids, one encode and one prefill per clip, K
  decoded rows reading ONE copy of the clip's prompt cache plus a small suffix each.

Also timed: perax's exact score mode (all labels' probabilities per clip) relative to sampling one
vote per clip, and the same weights with the layer stacks unrolled instead of scanned
(perax.models.layer_stack). Also printed:

- FLOPs of one batch (encode + vote program) from XLA's cost analysis of the unrolled programs
  (the decode loop's body is still counted once, so this is a lower bound) and the achieved fraction of a float32 matmul peak measured
  on the same machine in the same run;
- KV-cache bytes per vote at Qwen2-Audio-7B shapes (bf16, 30 s clips, K votes, new tokens as set):
  the shared-prefix layout against one repeated prompt copy per vote (the layout before issue 13);
- the compiled memory (temp + arguments, XLA's memory_analysis) of the vote program for K=32 and K=1
  on one 28 s clip with the benchmark's model.

The last line printed is ``votes/s perax=<x> hf=<y> ratio=<r> compiles_after_warmup=<n>``.

Flags (all prefixed ``votes_``): batch_size, k, new_tokens, clip_seconds, audio_d_model,
audio_layers, audio_heads, audio_ffn, hidden, layers, heads, kv_heads, intermediate, repeats,
hf_repeats, threads, seed, memory.
"""

from __future__ import annotations

import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from perax.data import features
from perax.models import cache as kv_cache
from perax.models import loading
from perax.models.config import Qwen2AudioConfig
from perax.models.tiny import make_tiny_checkpoint
from perax.raters import decoding, prompts
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
_MEMORY = flags.DEFINE_bool('votes_memory', True, 'Also compile K=32 and K=1 for a 28 s clip (memory).')

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


def _tree_bytes(tree) -> int:
  return sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def cache_bytes_per_vote(
  config: Qwen2AudioConfig, *, batch: int, votes: int, prompt_length: int, new_tokens: int, dtype=jnp.bfloat16
) -> dict:
  """KV-cache bytes per vote, from the cache structures' abstract shapes (no memory is allocated).

  Returns:
    {'shared': the shared-prefix cache (one prompt copy per clip plus each vote's suffix),
     'repeated': a prompt copy per vote with room for its tokens (the layout before issue 13)}.
  """
  prefix = jax.eval_shape(lambda: kv_cache.init_cache(config, batch, prompt_length, dtype))
  shared = jax.eval_shape(lambda: kv_cache.shared_prefix_cache(prefix, votes, max(new_tokens - 1, 1)))
  repeated = jax.eval_shape(
    lambda: kv_cache.init_cache(config, batch * votes, prompt_length + new_tokens, dtype)
  )
  rows = batch * votes
  # The shared cache's leaves hold the prefix once per layer for keys and once for values.
  return {'shared': _tree_bytes(shared) / rows, 'repeated': _tree_bytes(repeated) / rows}


def matmul_peak_flops(size: int = 1024, repeats: int = 5) -> float:
  """A float32 matmul's FLOP/s on the default device: the best of ``repeats`` timed runs."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = min(_timed(lambda: matmul(a).block_until_ready()) for _ in range(repeats))
  return 2 * size**3 / best


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
    analysis = analysis[0]
  return float(analysis.get('flops', float('nan')))


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
    # The same weights with the layer stacks unrolled (the default scans them): a baseline in this run.
    unrolled_model, _, _ = loading.load_model(checkpoint, scan_layers=False, with_processor=False)

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
  unrolled_sampler = sampler_lib.Sampler(unrolled_model, processor.tokenizer, batch_size=batch)
  encoder = prompts.PromptEncoder(processor)
  bucket = features.bucket_for(max(len(c) for c in clips))
  label_tokens = sampler_lib.LabelTokens.build(processor.tokenizer, LABELS)
  seeds = iter(range(_SEED.value, _SEED.value + 1_000_000))

  def encoded_batch(on=sampler):
    encoded = on.encode(*features.batch_features(clips, bucket))
    return encoded, [encoder.ids(text, int(n)) for n in encoded.num_tokens]

  def perax_votes(k, on=sampler):
    config = on.config(votes_per_clip=k, max_new_tokens=new_tokens, temperature=1.0, eos_ids=eos)
    encoded, prompt_ids = encoded_batch(on)
    return on.sample(
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

  def unrolled_votes():
    return perax_votes(votes, on=unrolled_sampler)

  for warm_up in (lambda: perax_votes(votes), lambda: perax_votes(1), perax_scores, unrolled_votes):
    warm_up()
  sample_config = sampler.config(
    votes_per_clip=votes, max_new_tokens=new_tokens, temperature=1.0, eos_ids=eos
  )
  feats, lengths = features.batch_features(clips, bucket)
  prompt_length = decoding.prompt_bucket(
    max(len(encoder.ids(text, int(n))) for n in prompts.num_audio_tokens(lengths))
  )
  # FLOPs from the unrolled programs: XLA's cost analysis counts a scanned stack's body once.
  encode_flops = _flops(jax.jit(unrolled_model.encode_audio).lower(feats, lengths).compile())
  sample_flops = _flops(
    sampler_lib.lower_sample_votes(
      unrolled_model,
      sample_config,
      batch_size=batch,
      prompt_length=prompt_length,
      feature_frames=feats.shape[-1],
    ).compile()
  )
  compiles_warm = sampler_lib.compile_count()
  perax_times = _best_seconds(
    {
      'votes': lambda: perax_votes(votes),
      'one_vote': lambda: perax_votes(1),
      'score': perax_scores,
      'unrolled': unrolled_votes,
    },
    _REPEATS.value,
  )
  perax_s, one_vote_s, score_s, unrolled_s = (
    perax_times[k] for k in ('votes', 'one_vote', 'score', 'unrolled')
  )
  compiles_after = sampler_lib.compile_count() - compiles_warm

  hf_votes(1)  # torch's first call (allocations, kernel selection)
  hf_s = _best_seconds({'votes': lambda: hf_votes(votes)}, _HF_REPEATS.value)['votes']

  perax_rate, hf_rate = batch * votes / perax_s, batch * votes / hf_s
  peak = matmul_peak_flops()
  batch_flops = encode_flops + sample_flops
  print(
    f'flops (XLA cost analysis, decode loop body counted once): encode {encode_flops:.3e} + votes '
    f'{sample_flops:.3e} per batch; {batch_flops / perax_s:.3e} FLOP/s achieved = '
    f'{batch_flops / perax_s / peak:.1%} of the measured f32 matmul peak {peak:.3e} FLOP/s'
  )
  seven_b = Qwen2AudioConfig.from_hf_dict(_QWEN2_AUDIO_7B)
  prompt_30s = decoding.prompt_bucket(int(prompts.num_audio_tokens(np.asarray([3000]))[0]) + 60)
  per_vote = cache_bytes_per_vote(
    seven_b, batch=8, votes=votes, prompt_length=prompt_30s, new_tokens=new_tokens
  )
  print(
    f'kv cache per vote at 7B shapes (bf16, 8 clips of 30 s, prompt bucket {prompt_30s}, K={votes}, '
    f'{new_tokens} new tokens): shared prefix {per_vote["shared"] / 2**20:.1f} MiB, one prompt copy per '
    f'vote {per_vote["repeated"] / 2**20:.1f} MiB ({per_vote["repeated"] / per_vote["shared"]:.1f} x)'
  )
  memory = _vote_memory(model, new_tokens) if _MEMORY.value else {}
  for k, value in memory.items():
    print(f'vote program memory (temp + arguments), one 28 s clip, K={k}: {value / 2**20:.1f} MiB')
  print(
    f'perax: {perax_s:.3f} s per batch of {batch * votes} votes ({bucket} s feature bucket, '
    f'one encode and prefill per clip)'
  )
  print(
    f'hf:    {hf_s:.3f} s per batch of {batch * votes} votes (30 s features, K encodes and prefills per clip)'
  )
  print(
    f'layer stacks scanned: {perax_s:.3f} s per batch; unrolled (same weights): {unrolled_s:.3f} s '
    f'(scanned / unrolled time {perax_s / unrolled_s:.2f})'
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
    'scanned_over_unrolled_time': perax_s / unrolled_s,
    'flops_per_batch': batch_flops,
    'fraction_of_matmul_peak': batch_flops / perax_s / peak,
    'cache_bytes_per_vote_7b': per_vote,
    'vote_memory_bytes': memory,
  }
  print(
    f'votes/s perax={perax_rate:.2f} hf={hf_rate:.2f} ratio={perax_rate / hf_rate:.1f} '
    f'compiles_after_warmup={compiles_after}'
  )
  return result


def _vote_memory(model, new_tokens: int) -> dict[int, int]:
  """Compiled temp + argument bytes of the vote program for K=32 and K=1 on one 28 s clip."""
  frames = 2800
  prompt_length = decoding.prompt_bucket(int(prompts.num_audio_tokens(np.asarray([frames]))[0]) + 60)
  out = {}
  for k in (32, 1):
    config = decoding.SamplingConfig(votes_per_clip=k, max_new_tokens=new_tokens)
    compiled = sampler_lib.lower_sample_votes(
      model,
      config,
      batch_size=1,
      prompt_length=prompt_length,
      feature_frames=features.bucket_for(frames * 160) * 100,
    ).compile()
    analysis = compiled.memory_analysis()
    out[k] = analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
  return out


# The text and audio sizes of Qwen2-Audio-7B-Instruct's config.json (the field notes' real config).
_QWEN2_AUDIO_7B = {
  'model_type': 'qwen2_audio',
  'audio_token_index': 151646,
  'audio_config': {
    'model_type': 'qwen2_audio_encoder',
    'd_model': 1280,
    'encoder_layers': 32,
    'encoder_attention_heads': 20,
    'encoder_ffn_dim': 5120,
    'num_mel_bins': 128,
    'max_source_positions': 1500,
  },
  'text_config': {
    'model_type': 'qwen2',
    'vocab_size': 156032,
    'hidden_size': 4096,
    'intermediate_size': 11008,
    'num_hidden_layers': 32,
    'num_attention_heads': 32,
    'num_key_value_heads': 32,
    'rope_theta': 10000.0,
    'rms_norm_eps': 1e-5,
    'max_position_embeddings': 8192,
  },
}
