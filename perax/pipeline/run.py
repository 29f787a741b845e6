"""The end-to-end job: corpus -> proxies -> distributions -> DiME-Aug -> training -> evaluation ->
analysis -> report.

Stages, each writing under ``out_dir`` and each skipped when its marker ``stages/<name>.json`` is
already there (so a killed run resumes where it stopped; training also resumes from its own
checkpoints). ``stages/config.json`` records the settings, and a rerun with other settings into the
same ``out_dir`` is refused rather than mixed with the old outputs:

  prepare        data/utterances.parquet, votes.parquet (human), reference_votes.parquet (if any)
  checkpoint     hf_checkpoint/ (a tiny random HF checkpoint, demo only) converted to checkpoint/
  proxies        proxies/sample/votes.parquet and proxies/score/scores.parquet
  distributions  distributions/{human,combined}/distributions.parquet (combined: human votes and
                 proxy scores, the training targets)
  augment        augment/train (DiME-Aug balanced training split), augment/eval (balanced test set)
  train          train/ (metrics.jsonl, checkpoints/)
  evaluate       train/eval_<step>/ (predictions and metrics by ambiguity level)
  analyze        analysis/ (alignment of proxies with human votes, sparse-vs-dense study)
  report         report.html (self-contained) and report.md

With no options it runs the embedded demo corpus with a tiny random checkpoint; with a corpus, a
checkpoint and a training config it runs a real study (README: IEMOCAP and MSP-Podcast).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

from perax import analysis
from perax import distributions as dist
from perax.analysis import plots
from perax.analysis import report as report_lib
from perax.augment import augmented_set
from perax.configs import config_path
from perax.core import atomic
from perax.core.errors import InputError
from perax.data import corpora, tables
from perax.data import labels as labels_lib
from perax.models import convert, loading, tiny
from perax.raters import prompts as prompts_lib
from perax.raters import proxies
from perax.train import evaluate as evaluate_lib
from perax.train import loop

STAGES = (
  'prepare',
  'checkpoint',
  'proxies',
  'distributions',
  'augment',
  'train',
  'evaluate',
  'analyze',
  'report',
)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """What the end-to-end job runs (launch/pipeline.py's flags).

  Attributes:
    out_dir: everything goes here; a rerun with the same out_dir resumes.
    corpus, corpus_path, corpus_options: the corpus (perax.data.corpora); demo needs no path.
    label_set: label set name or comma-separated labels.
    checkpoint: an HF or converted Qwen2-Audio directory; None creates a tiny random one (demo).
    dtype: compute dtype of proxy generation ('float32' or 'bfloat16').
    prompts_config: prompts JSON (None: configs/prompts/default.json); prompt_ids: which of them.
    votes_per_utterance, temperature, top_p, max_new_tokens, batch_size: proxy sampling.
    combine: how human and synthetic evidence make the training targets (perax.distributions).
    train_config: a configs/*.py file; train_steps overrides its total_steps when set.
    bootstrap, sparse_k, repeats: the analysis.
    seed: seeds every stage.
  """

  out_dir: str = 'runs/demo'
  corpus: str = 'demo'
  corpus_path: str | None = None
  corpus_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  label_set: str = 'demo'
  checkpoint: str | None = None
  dtype: str = 'float32'
  prompts_config: str | None = None
  prompt_ids: tuple[str, ...] | None = None
  votes_per_utterance: int = 10
  temperature: float = 1.0
  top_p: float = 1.0
  max_new_tokens: int = 4
  batch_size: int = 8
  combine: str = 'dirichlet'
  train_config: str = config_path('demo.py')
  train_steps: int | None = None
  bootstrap: int = 200
  sparse_k: tuple[int, ...] = (1, 2, 3)
  repeats: int = 3
  seed: int = 0


def _path(config: PipelineConfig, *parts: str) -> str:
  return os.path.join(config.out_dir, *parts)


def _run_stage(
  config: PipelineConfig, name: str, work: Callable[[], dict], echo: Callable[[str], None]
) -> dict:
  """Runs one stage unless its marker exists; the marker records its outputs and duration."""
  marker = _path(config, 'stages', f'{name}.json')
  if os.path.exists(marker):
    with open(marker, encoding='utf-8') as f:
      record = json.load(f)
    echo(f'[{name}] done earlier ({record["seconds"]:.1f} s), reusing its outputs')
    return record['outputs']
  echo(f'[{name}] running')
  started = time.time()
  outputs = work()
  record = {'outputs': outputs, 'seconds': time.time() - started}
  atomic.write_text(marker, json.dumps(record, indent=2, default=str))
  echo(f'[{name}] finished in {record["seconds"]:.1f} s')
  with open(marker, encoding='utf-8') as f:  # as a resumed run sees them
    return json.load(f)['outputs']


def _load_train_config(path: str) -> Any:
  spec = importlib.util.spec_from_file_location('perax_train_config', path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f'no training config at {path}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _prepare(config: PipelineConfig, echo) -> dict:
  return corpora.prepare(
    config.corpus,
    config.corpus_path,
    _path(config, 'data'),
    label_set=config.label_set,
    seed=config.seed,
    echo=echo,
    **dict(config.corpus_options),
  )


def _checkpoint(config: PipelineConfig, echo) -> dict:
  if config.checkpoint:
    return {'checkpoint': config.checkpoint}
  hf_dir = tiny.make_tiny_checkpoint(_path(config, 'hf_checkpoint'), seed=config.seed)
  echo(f'created a tiny random Qwen2-Audio checkpoint in HF format: {hf_dir}')
  converted = _path(config, 'checkpoint')
  if os.path.exists(converted):  # a conversion killed after its rename: redo it cleanly
    shutil.rmtree(converted)
  convert.convert_checkpoint(hf_dir, converted, dtype='float32')
  echo(f'converted it to {converted}')
  return {'checkpoint': converted, 'hf_checkpoint': hf_dir}


def _proxies(config: PipelineConfig, checkpoint: str, utterances: str, echo) -> dict:
  label_set = labels_lib.get_label_set(config.label_set)
  prompts = tuple(prompts_lib.load_prompts(config.prompts_config, config.prompt_ids))
  model, _, processor = loading.load_model(checkpoint, dtype=config.dtype)  # once for both modes
  manifest = tables.read_utterances(utterances)
  outputs = {}
  for mode in proxies.MODES:
    job = proxies.ProxyJob(
      model_name=proxies.model_name(checkpoint),
      label_set=label_set,
      prompts=prompts,
      mode=mode,
      votes_per_utterance=config.votes_per_utterance,
      temperature=config.temperature,
      top_p=config.top_p,
      max_new_tokens=config.max_new_tokens,
      seed=config.seed,
      batch_size=config.batch_size,
    )
    result = proxies.generate(job, manifest, _path(config, 'proxies', mode), model, processor)
    echo(f'proxies ({mode}): {result.rows} rows; {result.skipped.summary()}')
    outputs[mode] = result.output
  return outputs


def _distributions(config: PipelineConfig, data: Mapping[str, str], proxy: Mapping[str, str], echo) -> dict:
  utterances = tables.read_utterances(data['utterances'])
  human = tables.read_votes(data['votes'])
  scores = tables.read_table(proxy['score'])
  variants = {
    'human': dict(human_votes=human),
    'combined': dict(human_votes=human, synthetic_scores=scores, combine=config.combine),
  }
  outputs = {}
  for name, inputs in variants.items():
    table, info = dist.build_distributions(
      label_set=config.label_set, utterances=utterances, seed=config.seed, **inputs
    )
    path, _ = dist.write_distributions(table, info, _path(config, 'distributions', name))
    echo(f'distributions ({name}):\n{dist.format_summary(info)}')
    outputs[name] = path
  return outputs


def _augment(config: PipelineConfig, data: Mapping[str, str], targets: str, echo) -> dict:
  """DiME-Aug written out: the balanced training split, and the balanced evaluation set."""
  utterances = tables.read_utterances(data['utterances'])
  distributions = tables.read_table(targets)
  train = augmented_set.augment(
    utterances,
    distributions,
    _path(config, 'augment', 'train'),
    split='train',
    seed=config.seed,
    print_fn=echo,
  )
  evaluation = augmented_set.augment(
    utterances,
    distributions,
    _path(config, 'augment', 'eval'),
    split='test',
    seed=config.seed,
    eval_set=True,
    print_fn=echo,
  )
  return {'train': train, 'eval': evaluation}


def training_config(config: PipelineConfig, checkpoint: str, utterances: str, targets: str) -> Any:
  """The training run's config: ``config.train_config`` pointed at this run's tables and model."""
  train_config = _load_train_config(config.train_config)
  train_config.seed = config.seed
  train_config.model.checkpoint = checkpoint
  train_config.data.utterances = utterances
  train_config.data.distributions = targets
  train_config.data.label_set = config.label_set
  if config.train_steps is not None:
    train_config.total_steps = config.train_steps
  return train_config


def _train(train_config: Any, config: PipelineConfig, echo) -> dict:
  result = loop.train(train_config, _path(config, 'train'), echo=echo)
  steps = sorted(result.losses)
  figure = None
  if steps:
    figure = plots.loss_curve(steps, [result.losses[s] for s in steps], _path(config, 'train', 'loss.png'))
  return {
    'workdir': result.workdir,
    'final_step': result.final_step,
    'best_step': result.best_step,
    'first_loss': result.losses.get(steps[0]) if steps else None,
    'last_loss': result.losses.get(steps[-1]) if steps else None,
    'loss_plot': figure,
  }


def _evaluate(train_config: Any, config: PipelineConfig, echo) -> dict:
  results = evaluate_lib.evaluate_checkpoint(
    train_config, _path(config, 'train'), which='best', out_dir=_path(config, 'evaluation'), echo=echo
  )
  return {'metrics': results, 'out_dir': _path(config, 'evaluation')}


def _analyze(config: PipelineConfig, data: Mapping[str, str], proxy: Mapping[str, str], echo) -> dict:
  reference = data.get('reference_votes')
  inputs = analysis.Inputs(
    human=tables.read_votes(data['votes']),
    proxy=tables.read_table(proxy['score']),
    reference=tables.read_votes(reference) if reference else None,
    utterances=tables.read_utterances(data['utterances']),
    sources={
      'human votes': data['votes'],
      'proxy scores': proxy['score'],
      'dense reference': reference or '(none)',
    },
    proxy_path=proxy['score'],
  )
  settings = analysis.Settings(
    label_set=config.label_set,
    sparse_k=config.sparse_k,
    repeats=config.repeats,
    bootstrap=config.bootstrap,
    seed=config.seed,
  )
  outputs = analysis.analyze(
    inputs, settings, _path(config, 'analysis'), command='perax.pipeline (analyze stage)'
  )
  return {
    'report': outputs.report.html,
    'summary': outputs.summary,
    'tables': {name: paths['json'] for name, paths in outputs.tables.items()},
    'plots': dict(outputs.plots),
  }


def _metric_rows(by_level: Mapping[str, Mapping[str, float]]) -> list[dict]:
  """Rows of a metrics-by-level dict: one per level, one column per metric."""
  return [
    {'level': level, **{name: value for name, value in metrics.items()}}
    for level, metrics in by_level.items()
  ]


def _analysis_section(analyzed: Mapping) -> report_lib.Section:
  """The analysis's key tables and plots, read back from the files its stage wrote."""

  def rows(name):
    with open(analyzed['tables'][name], encoding='utf-8') as f:
      return json.load(f)

  alignment_rows, study_rows = rows('alignment'), rows('sparse_dense')
  tables_shown = [
    report_lib.Table(
      f'{metric} against the dense reference, by condition and level',
      analysis.pivot(alignment_rows, ('condition',), 'level', metric),
    )
    for metric in ('js_divergence', 'bhattacharyya')
  ]
  if study_rows:
    tables_shown.append(
      report_lib.Table(
        'js_divergence of k sparse human votes (with and without proxies) against the dense reference, by k',
        analysis.pivot(study_rows, ('condition', 'level'), 'k', 'js_divergence'),
      )
    )
  return report_lib.Section(
    'How well sparse votes, proxies and their combination recover the dense reference',
    paragraphs=(
      'Cells: value [95% bootstrap interval]. Lower JS is better, higher BC is better. '
      f'The full analysis report: {analyzed["report"]}.',
    ),
    tables=tuple(tables_shown),
    figures=tuple(
      report_lib.Figure(name.replace('_', ' '), path) for name, path in analyzed['plots'].items()
    ),
  )


def _report(config: PipelineConfig, stages: Mapping[str, Mapping], seconds: Mapping[str, float]) -> dict:
  """The run's report: what ran and on what, training, evaluation, then the analysis sections."""
  trained, evaluated = stages['train'], stages['evaluate']
  facts = {
    'corpus': config.corpus
    + (f' ({config.corpus_path})' if config.corpus_path else ' (embedded demo, generated from the seed)'),
    'label set': config.label_set,
    'checkpoint': stages['checkpoint']['checkpoint']
    + ('' if config.checkpoint else ' (tiny random Qwen2-Audio, converted from HF format)'),
    'proxy votes': stages['proxies']['sample'],
    'proxy scores': stages['proxies']['score'],
    'training targets': f'{stages["distributions"]["combined"]} (combine={config.combine})',
    'seed': config.seed,
    'stage seconds': ', '.join(f'{name} {value:.1f}' for name, value in seconds.items()),
  }
  paragraphs = [
    'Stages: ' + ' -> '.join(STAGES) + '. Each stage reuses its outputs when they are '
    'present, so a rerun resumes.'
  ]
  if not config.checkpoint:
    paragraphs.append(
      'The proxies here come from a tiny randomly initialised Qwen2-Audio: it knows nothing of '
      'emotion, so its votes show the machinery, not the value of proxies. The human side is real '
      'in form: 3 sparse votes per clip, against a dense 30-vote reference kept apart. Run with '
      '--checkpoint (a converted Qwen2-Audio-7B-Instruct) for real proxies.'
    )
  sections = [report_lib.Section('What ran', paragraphs=tuple(paragraphs), facts=facts)]
  training_facts = {
    'steps': trained['final_step'],
    'best step': trained['best_step'],
    'first loss': trained['first_loss'],
    'last loss': trained['last_loss'],
  }
  figures = (
    (report_lib.Figure('Training loss per step', trained['loss_plot']),) if trained.get('loss_plot') else ()
  )
  sections.append(
    report_lib.Section('Fine-tuning the distributional head', facts=training_facts, figures=figures)
  )
  sections.append(
    report_lib.Section(
      'Evaluation',
      paragraphs=(
        'Metrics of the fine-tuned head against the test targets, overall and per ambiguity level: '
        'on the plain test split and on the DiME-Aug balanced evaluation set built from it.',
      ),
      tables=tuple(
        report_lib.Table(f'{name}: metrics by ambiguity level', _metric_rows(by_level))
        for name, by_level in evaluated['metrics'].items()
      ),
    )
  )
  sections.append(_analysis_section(stages['analyze']))
  paths = report_lib.write_report(config.out_dir, 'perax: end-to-end run', sections)
  return {'html': paths.html, 'markdown': paths.markdown}


def _claim_out_dir(config: PipelineConfig) -> None:
  """Records the config in ``stages/config.json``; a rerun must bring the same one.

  Stages reuse their outputs by marker, so a rerun with other settings would mix runs silently.

  Raises:
    InputError: ``out_dir`` holds a run made with other settings (the differing fields are named).
  """
  wanted = json.loads(json.dumps(dataclasses.asdict(config), default=str))
  path = _path(config, 'stages', 'config.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      recorded = json.load(f)
    differing = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
    if differing:
      raise InputError(
        f'this directory holds a run with other settings (differing: {differing}); '
        'use another --out_dir, or remove this one to start over',
        path=path,
      )
    return
  atomic.write_text(path, json.dumps(wanted, indent=2))


def run_pipeline(config: PipelineConfig, echo: Callable[[str], None] = print) -> dict:
  """Runs (or resumes) every stage; returns each stage's outputs by stage name.

  Raises:
    InputError: ``config.out_dir`` holds a run made with other settings.
  """
  _claim_out_dir(config)
  outputs, seconds = {}, {}

  def stage(name, work):
    started = time.time()
    outputs[name] = _run_stage(config, name, work, echo)
    seconds[name] = time.time() - started
    return outputs[name]

  data = stage('prepare', lambda: _prepare(config, echo))
  checkpoint = stage('checkpoint', lambda: _checkpoint(config, echo))['checkpoint']
  proxy = stage('proxies', lambda: _proxies(config, checkpoint, data['utterances'], echo))
  targets = stage('distributions', lambda: _distributions(config, data, proxy, echo))['combined']
  stage('augment', lambda: _augment(config, data, targets, echo))
  train_config = training_config(config, checkpoint, data['utterances'], targets)
  stage('train', lambda: _train(train_config, config, echo))
  stage('evaluate', lambda: _evaluate(train_config, config, echo))
  stage('analyze', lambda: _analyze(config, data, proxy, echo))
  stage('report', lambda: _report(config, outputs, seconds))
  echo(f'report: {outputs["report"]["html"]}')
  return outputs
