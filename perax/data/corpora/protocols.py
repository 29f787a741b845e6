"""Corpus protocols: which utterances a study keeps, and which human votes make its targets.

A loader reads everything a release holds, then applies its protocol (IEMOCAP '4class', MSP-Podcast
'8class', ...; each loader documents its own). Applying one takes three steps, each counted:

1. Utterances the protocol leaves out by their consensus (IEMOCAP 'fru', MSP-Podcast 'X', ...) are
   dropped with that reason; their votes go with them.
2. Each vote is inside the protocol's classes (its label set, merges applied: IEMOCAP excited ->
   happy) or outside them. ``outside_votes`` decides what becomes of the outside ones:
   - 'drop' (default): they are left out of votes.parquet, so targets come from the in-set votes;
   - 'other': they become an explicit 'other' class (label 'other', the label set gains 'other',
     e.g. iemocap4_other), so targets keep their mass.
   Either way the utterances table gets ``n_in_set`` and ``n_outside``: the summed weight of the
   utterance's human votes inside and outside the protocol's classes (before any relabelling), and
   the votes table gets ``original_label`` (the label as read).
3. An utterance left with no vote to make a target from is dropped ('no human vote inside the label
   set'): perax never trains on, or scores against, a target without human evidence.

The :class:`ProtocolReport` counts every decision (kept, dropped and why) for prepare's summary and
its protocol.json; its ``label_set`` is the set downstream stages must use (--label_set).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from perax.core.errors import InputError
from perax.data import labels as labels_lib
from perax.data import tables

OUTSIDE_VOTES = ('drop', 'other')
OTHER = 'other'
NO_VOTE_REASON = 'no human vote inside the label set'


def test_splits(utterances: pa.Table) -> list[str]:
  """The corpus's test splits, sorted: every split value starting with 'test' (test, test1, test2...)."""
  return sorted(
    {s for s in tables.column(utterances, 'split') if isinstance(s, str) and s.startswith('test')}
  )


def default_test_split(splits: Sequence[str]) -> str | None:
  """'test1' where the corpus has it (MSP-Podcast), else 'test', else the first test split."""
  for name in ('test1', 'test'):
    if name in splits:
      return name
  return splits[0] if splits else None


def with_other(label_set: labels_lib.LabelSet) -> labels_lib.LabelSet:
  """``label_set`` with an explicit 'other' class appended (the registered <name>_other where one is)."""
  if OTHER in label_set.labels:
    return label_set
  try:
    return labels_lib.get_label_set(f'{label_set.name}_other')
  except InputError:
    labels = (*label_set.labels, OTHER)
    return labels_lib.LabelSet(','.join(labels), labels, label_set.merges)


def check_label_set(
  given: str | None, expected: labels_lib.LabelSet, protocol: str, corpus: str, hint: str
) -> labels_lib.LabelSet:
  """``expected``, after checking that a label set the user named (``given``) is the same set.

  Raises:
    InputError: ``given`` names another set (a hint says which protocol or option fits it).
  """
  if given:
    chosen = labels_lib.get_label_set(given)
    if (chosen.labels, dict(chosen.merges)) != (expected.labels, dict(expected.merges)):
      raise InputError(
        f'{corpus} protocol {protocol!r} takes its targets over label set {expected.name} '
        f'({", ".join(expected.labels)}), not {chosen.name}; {hint}'
      )
  return expected


@dataclasses.dataclass
class ProtocolReport:
  """Every decision a protocol took, in counts.

  Attributes:
    corpus, protocol: names. label_set: the set downstream stages must use. outside_votes: 'drop' or
    'other'. options: the loader options that shaped the protocol (JSON-able).
    utterances_read / utterances_kept: before and after. dropped: reason -> utterances dropped.
    votes_read: human vote rows read. votes_kept: rows written. votes_outside: rows outside the
    protocol's classes (dropped or relabelled 'other', per outside_votes); weight_outside: their weight.
    kept_per_split: split -> utterances kept. test_splits: the test splits kept (downstream chooses
    which to evaluate; default_test_split when it does not say).
  """

  corpus: str
  protocol: str
  label_set: str
  outside_votes: str
  options: dict
  utterances_read: int
  utterances_kept: int
  dropped: dict
  votes_read: int
  votes_kept: int
  votes_outside: int
  weight_outside: float
  kept_per_split: dict
  test_splits: list
  default_test_split: str | None

  def lines(self) -> list[str]:
    """The summary prepare prints: one line per decision."""
    options = ', '.join(f'{k}={v}' for k, v in self.options.items())
    dropped = '; '.join(f'{n} {reason}' for reason, n in self.dropped.items()) or 'none'
    fate = 'dropped' if self.outside_votes == 'drop' else "counted as class 'other'"
    return [
      f'protocol {self.corpus}/{self.protocol} ({options}): label set {self.label_set}',
      f'protocol kept {self.utterances_kept} of {self.utterances_read} utterances; dropped: {dropped}',
      f'protocol votes: {self.votes_kept} of {self.votes_read} human vote rows kept; {self.votes_outside} '
      f'outside the classes (weight {self.weight_outside:g}) {fate} (per-utterance column n_outside)',
      f'protocol kept per split: {", ".join(f"{s}: {n}" for s, n in self.kept_per_split.items())}; '
      f'test splits: {", ".join(self.test_splits) or "none"} (default {self.default_test_split})',
    ]

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def apply(
  corpus: str,
  protocol: str,
  utterances: pa.Table,
  votes: pa.Table,
  *,
  label_set: labels_lib.LabelSet,
  outside_votes: str,
  drop_reasons: Sequence[str | None],
  options: Mapping,
) -> tuple[pa.Table, pa.Table, ProtocolReport]:
  """Applies steps 1-3 of the module docstring.

  Args:
    corpus, protocol: names for the report.
    utterances: [N] rows (UTTERANCE_SCHEMA); votes: human votes of those utterances.
    label_set: the protocol's classes, without 'other' unless the protocol's vocabulary has it; with
      ``outside_votes='other'`` the targets' set is :func:`with_other` of it.
    outside_votes: 'drop' or 'other'.
    drop_reasons: [N] the reason step 1 drops each utterance, or None to keep it.
    options: loader options recorded in the report.

  Returns:
    (kept utterances with n_in_set and n_outside, their votes with original_label, the report).

  Raises:
    InputError: the protocol keeps no utterance (the reasons are counted in the message).
  """
  if outside_votes not in OUTSIDE_VOTES:
    raise InputError(f'outside_votes must be one of {OUTSIDE_VOTES}, got {outside_votes!r}')
  n = utterances.num_rows
  if len(drop_reasons) != n:
    raise ValueError(f'{len(drop_reasons)} drop reasons for {n} utterances')
  utt_ids = tables.column(utterances, 'utt_id')
  row_of = {u: i for i, u in enumerate(utt_ids)}
  vote_rows = np.asarray([row_of.get(u, -1) for u in tables.column(votes, 'utt_id')], np.int64)
  if (vote_rows < 0).any():
    raise ValueError('votes for utterances outside the table')
  weights = tables.column(votes, 'weight').astype(np.float64)
  labels = tables.column(votes, 'label')
  inside = label_set.index(votes.column('label')) >= 0
  n_in_set = np.bincount(vote_rows[inside], weights[inside], minlength=n)
  n_outside = np.bincount(vote_rows[~inside], weights[~inside], minlength=n)
  targets_set = with_other(label_set) if outside_votes == 'other' else label_set
  usable = n_in_set + (n_outside if outside_votes == 'other' else 0.0)
  reasons = list(drop_reasons)
  for i in range(n):
    if reasons[i] is None and usable[i] <= 0:
      reasons[i] = NO_VOTE_REASON
  keep = np.asarray([r is None for r in reasons])
  keep_vote = keep[vote_rows] & (inside | (outside_votes == 'other'))
  new_labels = np.where(inside, labels, OTHER) if outside_votes == 'other' else labels
  votes = votes.append_column('original_label', pa.array(labels.tolist(), pa.string()))
  votes = votes.set_column(
    votes.schema.get_field_index('label'), 'label', pa.array(new_labels.tolist(), pa.string())
  )
  votes = votes.filter(pa.array(keep_vote))
  utterances = utterances.append_column('n_in_set', pa.array(n_in_set, pa.float64()))
  utterances = utterances.append_column('n_outside', pa.array(n_outside, pa.float64()))
  utterances = utterances.filter(pa.array(keep))
  if not keep.any():
    reasons_text = '; '.join(f'{k}: {v}' for k, v in collections.Counter(reasons).most_common())
    raise InputError(f'{corpus} protocol {protocol!r} kept none of {n} utterances ({reasons_text})')
  outside_kept = ~inside & keep[vote_rows]
  report = ProtocolReport(
    corpus=corpus,
    protocol=protocol,
    label_set=targets_set.name,
    outside_votes=outside_votes,
    options=dict(options),
    utterances_read=n,
    utterances_kept=int(keep.sum()),
    dropped=dict(collections.Counter(r for r in reasons if r is not None).most_common()),
    votes_read=int(len(vote_rows)),
    votes_kept=int(keep_vote.sum()),
    votes_outside=int(outside_kept.sum()),
    weight_outside=float(weights[outside_kept].sum()),
    kept_per_split=dict(sorted(collections.Counter(tables.column(utterances, 'split').tolist()).items())),
    test_splits=test_splits(utterances),
    default_test_split=default_test_split(test_splits(utterances)),
  )
  return utterances, votes, report


def unapplied(corpus: str, utterances: pa.Table, votes: pa.Table, options: Mapping) -> ProtocolReport:
  """The report of protocol 'none': every utterance and vote as read, nothing dropped or added."""
  splits = test_splits(utterances)
  return ProtocolReport(
    corpus=corpus,
    protocol='none',
    label_set='',
    outside_votes='',
    options=dict(options),
    utterances_read=utterances.num_rows,
    utterances_kept=utterances.num_rows,
    dropped={},
    votes_read=votes.num_rows,
    votes_kept=votes.num_rows,
    votes_outside=0,
    weight_outside=0.0,
    kept_per_split=dict(sorted(collections.Counter(tables.column(utterances, 'split').tolist()).items())),
    test_splits=splits,
    default_test_split=default_test_split(splits),
  )
