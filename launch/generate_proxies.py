"""Synthetic votes (or exact label scores) from Qwen2-Audio for every utterance of a manifest.

  python launch/generate_proxies.py --checkpoint=ckpt/ --manifest=utterances.parquet \\
      --out_dir=runs/proxies --label_set=iemocap4 --votes_per_utterance=10 --temperature=1

Writes <out_dir>/votes.parquet (--mode=sample) or <out_dir>/scores.parquet (--mode=score), and
<out_dir>/skipped.parquet listing the utterances that could not be rated; rerun the same command
after an interruption to finish the job (see perax.raters.proxies). A model larger than one device
runs sharded: --mesh_shape='(1,4,2)' splits the weights over 4 fsdp x 2 tensor devices.
"""

import re

from absl import app, flags

from perax.core import cli
from perax.data import labels
from perax.raters import prompts, proxies

_CHECKPOINT = flags.DEFINE_string(
  'checkpoint', None, 'Converted perax or HF Qwen2-Audio directory.', required=True
)
_MANIFEST = flags.DEFINE_string('manifest', None, 'utterances.parquet (or .csv/.jsonl).', required=True)
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Output directory.', required=True)
_LABEL_SET = flags.DEFINE_string('label_set', 'iemocap4', 'Label set name (perax.data.labels).')
_LABELS = flags.DEFINE_list('labels', None, 'Comma-separated labels; overrides --label_set.')
_PROMPTS_CONFIG = flags.DEFINE_string(
  'prompts_config', None, 'Prompts JSON; configs/prompts/default.json when unset.'
)
_PROMPT_IDS = flags.DEFINE_list(
  'prompt_ids', None, 'Prompt ids from the config; its "default" list when unset.'
)
_PROMPT = flags.DEFINE_string(
  'prompt',
  None,
  'A literal prompt template with {labels} (and optionally '
  '{transcript}); replaces the config. Its prompt_id is --prompt_id.',
)
_PROMPT_ID = flags.DEFINE_string('prompt_id', 'custom', 'The prompt_id of --prompt.')
_SYSTEM_PROMPT = flags.DEFINE_string(
  'system_prompt', None, "System prompt; the chat template's default when unset."
)
_MODE = flags.DEFINE_enum(
  'mode', 'sample', proxies.MODES, 'sample: K votes per utterance; score: exact label probabilities.'
)
_VOTES = flags.DEFINE_integer('votes_per_utterance', 10, 'Votes per utterance and prompt.')
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'Sampling temperature; 0 = greedy.')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass; 1 = off.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Top-k sampling; 0 = off.')
_MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 8, 'Tokens generated at most per vote.')
_STOP_STRINGS = flags.DEFINE_list('stop_strings', ['\n'], 'Strings that end an answer.')
_CONSTRAINED = flags.DEFINE_bool('constrained', False, 'Only emit label strings (token trie).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Clips per batch (all local devices).')
_SHARD_SIZE = flags.DEFINE_integer('shard_size', 256, 'Utterances per resumable output shard.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_DTYPE = flags.DEFINE_enum(
  'dtype',
  None,
  ['float32', 'bfloat16'],
  'Compute dtype. Default: bfloat16 on GPU and TPU, float32 on CPU (float32 matches HF exactly).',
)


class _MeshShapeParser(flags.ArgumentParser):
  """Parses '(data, fsdp, tensor)' (parentheses optional) into a tuple of three ints."""

  syntactic_help = '(data, fsdp, tensor) sizes, e.g. (1,4,2); one may be -1'

  def parse(self, argument):
    if isinstance(argument, tuple):
      return argument
    parts = [p for p in re.split(r'[\s,()]+', argument) if p]
    if len(parts) != 3 or not all(re.fullmatch(r'-?\d+', p) for p in parts):
      raise ValueError(f'expected three integers (data, fsdp, tensor), got {argument!r}')
    return tuple(int(p) for p in parts)

  def flag_type(self):
    return 'tuple of 3 ints'


_MESH_SHAPE = flags.DEFINE(
  _MeshShapeParser(),
  'mesh_shape',
  None,
  "(data, fsdp, tensor) mesh over this process's devices; weights are sharded by the model's "
  "logical-axis rules, batches over data x fsdp. Default: every local device on the 'data' axis.",
)
_LONG_CLIPS = flags.DEFINE_enum(
  'long_clips',
  'truncate',
  ['truncate', 'split'],
  'Clips over 30 s: truncate (rate the first 30 s) or split (rate 30 s windows; votes pooled, label '
  'distributions averaged weighted by window duration). Counted in a warning and marked in clip_policy.',
)
_MODEL_NAME = flags.DEFINE_string(
  'model_name', None, "Model name in the rater column; the checkpoint's directory name when unset."
)
_STRICT_AUDIO = flags.DEFINE_bool(
  'strict_audio',
  False,
  'Raise on audio that cannot be rated (unreadable, NaN/Inf, empty) instead of skipping it.',
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  label_set = labels.get_label_set(','.join(_LABELS.value) if _LABELS.value else _LABEL_SET.value)
  if _PROMPT.value is not None:
    prompt_list = [prompts.Prompt(_PROMPT_ID.value, _PROMPT.value)]
  else:
    prompt_list = prompts.load_prompts(_PROMPTS_CONFIG.value, _PROMPT_IDS.value)
  job = proxies.ProxyJob(
    model_name=_MODEL_NAME.value or proxies.model_name(_CHECKPOINT.value),
    label_set=label_set,
    prompts=tuple(prompt_list),
    system_prompt=_SYSTEM_PROMPT.value,
    mode=_MODE.value,
    votes_per_utterance=_VOTES.value,
    temperature=_TEMPERATURE.value,
    top_k=_TOP_K.value,
    top_p=_TOP_P.value,
    max_new_tokens=_MAX_NEW_TOKENS.value,
    constrained=_CONSTRAINED.value,
    stop_strings=tuple(_STOP_STRINGS.value or ()),
    seed=_SEED.value,
    batch_size=_BATCH_SIZE.value,
    shard_size=_SHARD_SIZE.value,
    lenient_audio=not _STRICT_AUDIO.value,
    long_clips=_LONG_CLIPS.value,
  )
  result = proxies.generate_from_files(
    job, _CHECKPOINT.value, _MANIFEST.value, _OUT_DIR.value, dtype=_DTYPE.value, mesh_shape=_MESH_SHAPE.value
  )
  if result.output:
    print(
      f'{result.output}: {result.rows} rows; skipped {result.skipped.total} utterances; {result.compiles} compilations'
    )


if __name__ == '__main__':
  cli.run(main)
