"""The prepared GPU check's sections: each measures one thing on random weights and returns figures.

Every section is independent (builds its own model and compiles its own programs) so a launcher can
run each in its own process with its own timeout (launch/gpu_check.py):

- ``peak``: the bf16 matmul peak (FLOP/s) and the memory bandwidth (bytes/s) of the device;
- ``prefill``: one prefill of B prompts (merge_audio + decoder), seconds and FLOP/s (XLA's count);
- ``decode``: one decode step of the B * K vote rows, seconds, and the bytes it must read at least
  (decoder weights, lm_head and KV cache: plan.decode_unread_bytes), to set against the bandwidth;
- ``train``: one LoRA training step, seconds and FLOP/s;
- ``votes``: perax's sampler from features to K votes per clip, votes per second;
- ``hf``: Hugging Face ``generate(num_return_sequences=K)`` on the same prompts, votes per second
  (torch; HF's processor always pads features to 30 s, so HF gets 30 s features).

Votes are forced to ``new_tokens`` tokens on both sides (no stop ids in perax, ``min_new_tokens`` in
HF), so both decode the same number of steps. :func:`summary` turns the sections' figures into MFU
(FLOP/s over the measured matmul peak) and the decode step's time over its bandwidth limit.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from perax.models.config import Qwen2AudioConfig

# Shapes for --tiny: a smoke test that runs in seconds on CPU.
TINY_HF_CONFIG = {
  'model_type': 'qwen2_audio',
  'audio_token_index': 250,
  'audio_config': {
    'num_mel_bins': 128,
    'encoder_layers': 1,
    'encoder_attention_heads': 2,
    'encoder_ffn_dim': 64,
    'd_model': 32,
    'max_source_positions': 1500,
  },
  'text_config': {
    'vocab_size': 256,
    'hidden_size': 64,
    'intermediate_size': 128,
    'num_hidden_layers': 1,
    'num_attention_heads': 4,
    'num_key_value_heads': 2,
  },
}
SECTIONS = ('peak', 'prefill', 'decode', 'votes', 'hf', 'train')
# Wall-clock limits per section at 7B shapes on one GPU (random weights, 7B compiles included); all
# together stay under the launcher's 560 s budget only when some finish early, which the budget enforces.
SECTION_TIMEOUTS_S = {'peak': 60, 'prefill': 150, 'decode': 150, 'votes': 180, 'hf': 180, 'train': 200}


@dataclasses.dataclass(frozen=True)
class CheckSettings:
  """What the check measures.

  Attributes:
    hf_config: the model's HF config.json contents (7B-shaped by default; tiny with --tiny).
    batch_size: clips per batch (B); votes_per_clip: K; new_tokens: tokens per vote.
    clip_seconds: clip duration (feature bucket and audio tokens).
    train_batch_size: examples per LoRA training step.
    dtype: weights and compute ('bfloat16').
    tiny: smaller measuring arrays (matmul, bandwidth) for a CPU smoke test.
    repeats: timed calls per measurement (best reported).
  """

  hf_config: dict
  batch_size: int = 8
  votes_per_clip: int = 10
  new_tokens: int = 8
  clip_seconds: float = 10.0
  train_batch_size: int = 4
  dtype: str = 'bfloat16'
  tiny: bool = False
  repeats: int = 3

  def model_config(self) -> Qwen2AudioConfig:
    return Qwen2AudioConfig.from_hf_dict(self.hf_config)

  def plan_settings(self, batch_size: int | None = None):
    from perax.benchmarks import plan  # pylint: disable=import-outside-toplevel

    return plan.PlanSettings(
      batch_size=self.batch_size if batch_size is None else batch_size,
      clip_seconds=self.clip_seconds,
      votes_per_clip=self.votes_per_clip,
      new_tokens=self.new_tokens,
      compute_dtype=self.dtype,
      param_dtype=self.dtype,
      lora_rank=4 if self.tiny else 16,
    )

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, value: dict) -> CheckSettings:
    return cls(**value)


def section_peak(settings: CheckSettings) -> dict:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from perax.benchmarks import peak  # pylint: disable=import-outside-toplevel

  matmul = peak.matmul_peak(jnp.bfloat16, size=256 if settings.tiny else 8192, repeats=settings.repeats)
  bandwidth = peak.memory_bandwidth(2**24 if settings.tiny else 2**31, repeats=settings.repeats)
  return {
    'device': matmul.device,
    'matmul_flops_per_s': matmul.per_second,
    'matmul_size': 256 if settings.tiny else 8192,
    'bandwidth_bytes_per_s': bandwidth.per_second,
    'bandwidth_array_bytes': bandwidth.work / 2,
  }


def _program(settings: CheckSettings, name: str, batch_size: int | None = None) -> dict:
  """Compiles one planner program on one device and times it on random inputs."""
  from perax.benchmarks import plan  # pylint: disable=import-outside-toplevel

  config, plan_settings = settings.model_config(), settings.plan_settings(batch_size)
  mesh = plan.make_mesh((1, 1, 1))
  program = plan.plan_programs(config, plan_settings, mesh, (name,))[name]
  seconds = plan.measure(program, repeats=settings.repeats)
  figures = program.to_json()
  figures['seconds'] = seconds
  figures['flops_per_s'] = None if not program.flops else program.flops / seconds
  return figures


def section_prefill(settings: CheckSettings) -> dict:
  return _program(settings, 'prefill')


def section_decode(settings: CheckSettings) -> dict:
  from perax.benchmarks import plan  # pylint: disable=import-outside-toplevel

  figures = _program(settings, 'decode_step')
  unread = plan.decode_unread_bytes(settings.model_config(), settings.dtype)
  figures['bytes_to_read'] = figures['argument_bytes'] - unread
  return figures


def section_train(settings: CheckSettings) -> dict:
  return _program(settings, 'train_step', settings.train_batch_size)


def synthetic_inputs(settings: CheckSettings, seed: int = 0):
  """Random log-mel features of the clip's bucket, their valid lengths and one prompt per clip.

  Returns:
    (features [B, 128, F] float32, feature_lengths [B] int32, prompts: B int32 arrays, each 40 text
    tokens, the clip's audio tokens, 20 text tokens).
  """
  from perax.benchmarks import plan  # pylint: disable=import-outside-toplevel
  from perax.data import features  # pylint: disable=import-outside-toplevel

  config = settings.model_config()
  shapes = plan.Shapes.for_settings(settings.plan_settings())
  rng = np.random.default_rng(seed)
  batch = settings.batch_size
  feats = rng.normal(size=(batch, config.audio.num_mel_bins, shapes.feature_frames)).astype(np.float32)
  samples = int(np.ceil(settings.clip_seconds * features.SAMPLE_RATE))
  lengths = np.full((batch,), features.valid_frames(samples), np.int32)
  text_ids = min(config.text.vocab_size, config.audio_token_id)
  prompts = [
    np.concatenate(
      [
        rng.integers(0, text_ids, 40),
        np.full(shapes.audio_tokens, config.audio_token_id),
        rng.integers(0, text_ids, 20),
      ]
    ).astype(np.int32)
    for _ in range(batch)
  ]
  return feats, lengths, prompts


def section_votes(settings: CheckSettings) -> dict:
  """perax's sampler on random weights: encode, prefill, K votes per clip of ``new_tokens`` each."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from perax.benchmarks import plan  # pylint: disable=import-outside-toplevel
  from perax.raters import sampler as sampler_lib  # pylint: disable=import-outside-toplevel

  model = plan.abstract_backbone(settings.model_config(), settings.dtype, settings.dtype)
  graphdef, abstract = nnx.split(model)
  model = nnx.merge(graphdef, plan.random_like(abstract))
  sampler = sampler_lib.Sampler(model, None, batch_size=settings.batch_size)
  feats, lengths, prompts = synthetic_inputs(settings)
  config = sampler_lib.SamplingConfig(
    votes_per_clip=settings.votes_per_clip, max_new_tokens=settings.new_tokens, temperature=1.0
  )
  utt_ids = [f'clip{i}' for i in range(settings.batch_size)]

  def votes(seed):
    audio = sampler.encode(feats, lengths)
    return sampler.sample(audio, prompts, config, seed=seed, utt_ids=utt_ids, prompt_id='check')

  start = time.perf_counter()
  tokens = votes(0)
  first = time.perf_counter() - start
  best = float('inf')
  for seed in range(1, settings.repeats + 1):
    start = time.perf_counter()
    tokens = votes(seed)
    best = min(best, time.perf_counter() - start)
  rows = settings.batch_size * settings.votes_per_clip
  return {
    'seconds_per_batch': best,
    'first_call_seconds': first,
    'votes_per_s': rows / best,
    'votes_per_batch': rows,
    'tokens_per_vote': int((np.asarray(tokens) >= 0).sum(-1).max()),
  }


def section_hf(settings: CheckSettings) -> dict:
  """Hugging Face generate on random weights, the same prompts with 30 s features."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  dtype = getattr(torch, settings.dtype)
  config = transformers.Qwen2AudioConfig.from_dict(settings.hf_config)
  torch.manual_seed(0)
  previous = torch.get_default_dtype()
  torch.set_default_dtype(dtype)
  try:
    with torch.device(device):
      model = transformers.Qwen2AudioForConditionalGeneration(config).eval()
  finally:
    torch.set_default_dtype(previous)
  _, lengths, prompts = synthetic_inputs(settings)
  rng = np.random.default_rng(0)
  batch = settings.batch_size
  full = 3000  # HF's processor pads every clip to 30 s
  input_features = torch.tensor(rng.normal(size=(batch, 128, full)), dtype=dtype, device=device)
  feature_mask = torch.tensor(np.arange(full)[None, :] < lengths[:, None], dtype=torch.long, device=device)
  input_ids = torch.tensor(np.stack(prompts), dtype=torch.long, device=device)
  generate = dict(
    input_ids=input_ids,
    attention_mask=torch.ones_like(input_ids),
    input_features=input_features,
    feature_attention_mask=feature_mask,
    do_sample=True,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    num_return_sequences=settings.votes_per_clip,
    max_new_tokens=settings.new_tokens,
    min_new_tokens=settings.new_tokens,
    pad_token_id=0,
  )

  def votes():
    with torch.no_grad():
      out = model.generate(**generate)
    if device == 'cuda':
      torch.cuda.synchronize()
    return out

  start = time.perf_counter()
  out = votes()
  first = time.perf_counter() - start
  best = float('inf')
  for _ in range(max(1, settings.repeats - 1)):
    start = time.perf_counter()
    out = votes()
    best = min(best, time.perf_counter() - start)
  rows = batch * settings.votes_per_clip
  return {
    'seconds_per_batch': best,
    'first_call_seconds': first,
    'votes_per_s': rows / best,
    'votes_per_batch': rows,
    'tokens_per_vote': int(out.shape[1] - input_ids.shape[1]),
    'device': torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
    'torch': torch.__version__,
    'transformers': transformers.__version__,
  }


SECTION_FUNCTIONS = {
  'peak': section_peak,
  'prefill': section_prefill,
  'decode': section_decode,
  'votes': section_votes,
  'hf': section_hf,
  'train': section_train,
}


def summary(sections: dict) -> dict:
  """The headline figures from whatever sections succeeded (None where an input is missing).

  Args:
    sections: ``{name: {'status': 'ok', 'figures': {...}}, ...}``.
  """

  def figures(name):
    entry = sections.get(name) or {}
    return entry.get('figures') if entry.get('status') == 'ok' else None

  peak, prefill, decode = figures('peak'), figures('prefill'), figures('decode')
  train, votes, hf = figures('train'), figures('votes'), figures('hf')
  out: dict = {}
  matmul = peak and peak['matmul_flops_per_s']
  bandwidth = peak and peak['bandwidth_bytes_per_s']
  out['prefill_mfu'] = prefill and matmul and prefill['flops_per_s'] and prefill['flops_per_s'] / matmul
  out['train_mfu'] = train and matmul and train['flops_per_s'] and train['flops_per_s'] / matmul
  out['decode_step_s'] = decode and decode['seconds']
  limit = decode and bandwidth and decode['bytes_to_read'] / bandwidth
  out['decode_bandwidth_limit_s'] = limit
  out['decode_over_limit'] = limit and decode['seconds'] / limit
  out['votes_per_s_perax'] = votes and votes['votes_per_s']
  out['votes_per_s_hf'] = hf and hf['votes_per_s']
  out['votes_speedup'] = votes and hf and votes['votes_per_s'] / hf['votes_per_s']
  return {k: (None if v is None or v is False else float(v)) for k, v in out.items()}


def summary_lines(result: dict) -> list[str]:
  """Readable lines for the summary of :func:`summary`."""
  s = result['summary']

  def fmt(value, spec, unit=''):
    return 'n/a' if value is None else f'{value:{spec}}{unit}'

  return [
    f'votes/s: perax {fmt(s["votes_per_s_perax"], ".1f")}, HF generate {fmt(s["votes_per_s_hf"], ".1f")}, '
    f'speed-up {fmt(s["votes_speedup"], ".2f", "x")}',
    f'prefill MFU {fmt(s["prefill_mfu"] and 100 * s["prefill_mfu"], ".1f", "%")} of the measured matmul peak',
    f'decode step {fmt(s["decode_step_s"] and 1e3 * s["decode_step_s"], ".2f", " ms")} against a bandwidth '
    f'limit of {fmt(s["decode_bandwidth_limit_s"] and 1e3 * s["decode_bandwidth_limit_s"], ".2f", " ms")} '
    f'({fmt(s["decode_over_limit"], ".2f", "x")} the limit)',
    f'LoRA train step MFU {fmt(s["train_mfu"] and 100 * s["train_mfu"], ".1f", "%")}',
  ]
