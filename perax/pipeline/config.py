"""What the end-to-end job runs: :class:`PipelineConfig`, whose defaults come from the stages themselves.

No default is restated here. The proxy sampling settings default to the fields of
perax.raters.proxies.ProxyJob, the analysis settings to perax.analysis.Settings, so the pipeline and
the stage launchers (launch/generate_proxies.py, launch/analyze.py) cannot drift apart. The label
set defaults to the corpus's natural one (:data:`NATURAL_LABEL_SETS`); a manifest corpus has none and
needs --label_set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from perax import analysis
from perax.configs import config_path
from perax.core.errors import InputError
from perax.data import corpora
from perax.raters import proxies

# The label set a corpus is studied with unless --label_set says otherwise: its protocol's
# (perax.data.corpora.natural_label_set, the one home of that rule), shown here for --help.
NATURAL_LABEL_SETS = {
  c: corpora.natural_label_set(c) for c in corpora.CORPORA if corpora.natural_label_set(c)
}
# The test split(s) evaluated unless --test_splits says otherwise, matched case-insensitively against
# the corpus's split names (MSP-Podcast's Test1 / Test2 / Test3: Test1, as the challenge reports).
NATURAL_TEST_SPLITS = {'msp_podcast': ('test1',)}
DEFAULT_TEST_SPLITS = ('test',)
ALL_FOLDS = 'all'


def _default(cls: type, name: str) -> Any:
  """The default of dataclass field ``name`` of ``cls`` (the one place it is written)."""
  field = {f.name: f for f in dataclasses.fields(cls)}[name]
  if field.default is not dataclasses.MISSING:
    return field.default
  return field.default_factory()  # type: ignore[misc]


def proxy_default(name: str) -> Any:
  """The default of a proxy sampling setting: perax.raters.proxies.ProxyJob's field default."""
  return _default(proxies.ProxyJob, name)


def analysis_default(name: str) -> Any:
  """The default of an analysis setting: perax.analysis.Settings's field default."""
  return _default(analysis.Settings, name)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """What the end-to-end job runs (launch/pipeline.py's flags).

  Attributes:
    out_dir: everything goes here; a rerun with the same out_dir reuses every stage whose settings and
      inputs are unchanged (perax.pipeline.stages).
    corpus, corpus_path: the corpus (perax.data.corpora); demo needs no path (it is generated).
    corpus_options: the loader's own options (test_session=..., modality=...).
    lenient: skip and count malformed corpus input instead of failing.
    label_set: label set name or comma-separated labels; None: the corpus's natural set.
    checkpoint: an HF or converted Qwen2-Audio directory; None creates a tiny random one (demo).
    dtype: compute dtype of proxy generation ('float32' or 'bfloat16').
    prompts_config: prompts JSON (None: perax's default prompts); prompt_ids: which of them.
    votes_per_utterance, temperature, top_k, top_p, max_new_tokens: proxy sampling (ProxyJob's).
    batch_size: clips per proxy batch (does not change the proxies).
    combine: how human and synthetic evidence make the training targets (perax.distributions).
    level_edges: fixed (e1, e2) ambiguity edges; None: tertiles of the training split's human entropy.
    train_config: a configs/*.py file; train_steps overrides its total_steps when set.
    folds: cross-validation folds (values of the utterances' ``fold`` column, or 'all'); None: one run
      on the corpus's own splits.
    test_splits: the split(s) evaluated; None: the corpus's natural test split(s).
    bootstrap, sparse_k, repeats: the analysis (perax.analysis.Settings's defaults).
    seed: seeds every stage.
  """

  out_dir: str = 'runs/demo'
  corpus: str = 'demo'
  corpus_path: str | None = None
  corpus_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  lenient: bool = False
  label_set: str | None = None
  checkpoint: str | None = None
  dtype: str = 'float32'
  prompts_config: str | None = None
  prompt_ids: tuple[str, ...] | None = None
  votes_per_utterance: int = proxy_default('votes_per_utterance')
  temperature: float = proxy_default('temperature')
  top_k: int = proxy_default('top_k')
  top_p: float = proxy_default('top_p')
  max_new_tokens: int = proxy_default('max_new_tokens')
  batch_size: int = proxy_default('batch_size')
  combine: str = 'dirichlet'
  level_edges: tuple[float, float] | None = None
  train_config: str = config_path('demo.py')
  train_steps: int | None = None
  folds: tuple[str, ...] | None = None
  test_splits: tuple[str, ...] | None = None
  bootstrap: int = analysis_default('bootstrap')
  sparse_k: tuple[int, ...] = analysis_default('sparse_k')
  repeats: int = analysis_default('repeats')
  seed: int = 0

  def resolved_label_set(self) -> str:
    """The label set this run uses: ``label_set``, or the corpus's natural one.

    Raises:
      InputError: no label set was given and the corpus has no natural one (a manifest).
    """
    if self.label_set:
      return self.label_set
    options = dict(self.corpus_options)
    natural = corpora.natural_label_set(
      self.corpus, options.get('protocol'), options.get('outside_votes') or 'drop'
    )
    if natural is None:
      raise InputError(
        f'corpus {self.corpus!r} (protocol {options.get("protocol") or "default"}) has no natural label '
        'set: give --label_set (a name such as iemocap4, or comma-separated labels)'
      )
    return natural

  def wanted_test_splits(self) -> tuple[str, ...]:
    """The test split names asked for (before matching them against the corpus's splits)."""
    if self.test_splits:
      return tuple(self.test_splits)
    return NATURAL_TEST_SPLITS.get(self.corpus, DEFAULT_TEST_SPLITS)
