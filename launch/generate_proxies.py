"""Synthetic votes (or exact label scores) from Qwen2-Audio for every utterance of a manifest.

  python launch/generate_proxies.py --checkpoint=ckpt/ --manifest=utterances.parquet \\
      --out_dir=runs/proxies --label_set=iemocap4 --votes_per_utterance=10 --temperature=1

Writes <out_dir>/votes.parquet (--mode=sample) or <out_dir>/scores.parquet (--mode=score); rerun
the same command after an interruption to finish the job (see perax.raters.proxies).
"""

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
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_MODEL_NAME = flags.DEFINE_string(
  'model_name', None, "Model name in the rater column; the checkpoint's directory name when unset."
)
_STRICT_AUDIO = flags.DEFINE_bool(
  'strict_audio', False, 'Raise on unreadable audio instead of counting and skipping it.'
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
  )
  proxies.generate_from_files(job, _CHECKPOINT.value, _MANIFEST.value, _OUT_DIR.value, dtype=_DTYPE.value)


if __name__ == '__main__':
  cli.run(main)
