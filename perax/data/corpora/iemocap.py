"""IEMOCAP: per-evaluator labels from Session*/dialog/EmoEvaluation/<dialog>.txt (Latin-1).

Each utterance is a block: a header ``[start - end] TAB turn id TAB consensus code TAB [V, A, D]``,
then one line per evaluator: ``C-<id>:`` categorical (one or more labels separated by ``;``, then a
comment in parentheses), ``A-<id>:`` dimensional (``val 3; act 2; dom 2;``). ``C-E*`` are external
evaluators, ``C-F*`` / ``C-M*`` the actors' self-evaluations. Lines starting with ``%`` are comments.

What becomes of it:
- utterances: utt_id is the turn id (Ses01F_impro01_F000); speaker the session and the gender of the
  turn's last id group (Ses01F_impro01_M003 -> Ses01M); fold the session (Session1..Session5); split
  'test' for ``test_session``, 'dev' for ``dev_session`` (none by default: the usual
  leave-one-session-out protocol has train and test only), else 'train'. transcript from
  dialog/transcriptions/<dialog>.txt (null where the turn has none). audio_path is
  sentences/wav/<dialog>/<turn>.wav (start_s/end_s NaN: the file is the segment); where only the
  dialog recording dialog/wav/<dialog>.wav exists it is used with the header's start and end; where
  neither exists, null. duration_s = end - start of the header. Extra columns: ``consensus`` (the
  header code as a canonical label, 'invalid' for xxx) and ``valence``, ``arousal``, ``dominance``
  (the header's means of the A- lines).
- votes: one row per label of each C- line, weight 1/(labels on the line), text the label as written
  ("Other:curious"), extra column ``comment`` (the parenthesised comment, null when empty). Raters are
  scoped by session (Session1/E2): whether an id denotes the same person across sessions is not
  documented. Self-evaluations are left out unless ``self_evaluations``.
- dimensional ratings: an A- line is taken to come from the evaluator with the same id in the same
  block; its valence/arousal/dominance are attached to that evaluator's vote rows. A- lines of an
  evaluator without a C- line there have no categorical vote to carry them: they remain represented
  by the header's means only.

Protocols (``protocol=``; applied as perax.data.corpora.protocols describes, every decision counted):
- '4class' (default, the field's usual protocol): utterances whose consensus is neu, hap, exc, sad or
  ang (5,531 in the full release); classes iemocap4 (neutral, happy, sad, angry; excited merged into
  happy). Targets come from the evaluators' votes inside those classes; the votes outside them
  (frustrated, surprise, other, ...) are counted per utterance in ``n_outside`` and, per
  ``outside_votes``, dropped (default) or kept as an explicit class 'other' (label set
  iemocap4_other). An utterance left with no in-set vote is dropped.
- 'any_in_set': every utterance with at least one vote inside the classes of ``label_set`` (default
  iemocap4), whatever its consensus (xxx and fru included).
- 'full': every utterance with a vote, over the full evaluator vocabulary (label set iemocap: neutral,
  happy, excited, sad, angry, frustrated, surprise, fear, disgust, other).
- 'none': everything as read (no protocol columns): for inspection, never for training.
Self-evaluations count only with ``self_evaluations`` (they can rescue an utterance from 'no in-set
vote'). Folds are the sessions (fold = Session1..Session5) for leave-one-session-out; ``split``
follows ``test_session`` / ``dev_session``.
"""

from __future__ import annotations

import glob
import os
import re

from perax.core.errors import InputError, SkipCounter, handle
from perax.data import labels as labels_lib
from perax.data import tables
from perax.data.corpora import base, protocols
from perax.data.corpora.audio_info import existing_audio

NAME = 'iemocap'
SESSIONS = (1, 2, 3, 4, 5)
ENCODING = 'latin-1'
PROTOCOLS = ('4class', 'any_in_set', 'full', 'none')
# Consensus labels of the 4-class protocol: neu, hap, exc (merged into happy), sad, ang.
FOUR_CLASS_CONSENSUS = frozenset(('neutral', 'happy', 'excited', 'sad', 'angry'))

_NUMBER = r'(\d+(?:\.\d*)?)'
_HEADER = re.compile(rf'^\[\s*{_NUMBER}\s*-\s*{_NUMBER}\s*\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]\s*$')
_EVALUATOR_LINE = re.compile(r'^([CA])-([A-Za-z]+\d*)\s*:(.*)$')
_TURN = re.compile(r'^Ses(\d{2})[FM]_\S+_([FM])[A-Za-z]*\d+$')
_DIMENSION = re.compile(r'\b(val|act|dom)\s+(-?\d+(?:\.\d*)?)')
_TRANSCRIPT = re.compile(r'^(\S+)\s+\[[^\]]*\]\s*:\s?(.*)$')
_SELF_EVALUATOR = re.compile(r'^[FM]\d*$')


def _lines(text: str) -> list[str]:
  """The lines of a file's text, split at \\n only (\\r\\n tolerated): str.splitlines would also split
  at U+0085, which is what Latin-1 makes of a cp1252 ellipsis byte, and shift every line number after."""
  return [line.removesuffix('\r') for line in text.split('\n')]


def _split_comment(text: str) -> tuple[str, str | None]:
  """(labels part, comment or None) of the text after ``C-<id>:``."""
  start = text.find('(')
  if start < 0:
    return text, None
  end = text.rfind(')')
  comment = text[start + 1 : end if end > start else len(text)].strip()
  return text[:start], comment or None


def _parse_header(match: re.Match, session: int, dialog: str, path: str, line: int) -> dict:
  """The utterance fields of a block header, checked against its file."""
  start, end, turn, code, vad = match.groups()
  turn_match = _TURN.match(turn)
  if not turn_match or not turn.startswith(f'{dialog}_'):
    raise InputError(f'turn id {turn!r} does not belong to dialog {dialog!r}', path=path, line=line)
  if int(turn_match.group(1)) != session:
    raise InputError(f'turn id {turn!r} is not from Session{session}', path=path, line=line)
  try:
    valence, arousal, dominance = (float(v) for v in vad.split(','))
  except ValueError as e:
    raise InputError(f'expected [V, A, D], found [{vad}]', path=path, line=line) from e
  try:
    consensus = labels_lib.from_code(NAME, code)
  except InputError as e:
    raise InputError(e.reason, path=path, line=line) from e
  start_s, end_s = float(start), float(end)
  if end_s < start_s:
    raise InputError(f'segment ends ({end_s}) before it starts ({start_s})', path=path, line=line)
  return {
    'utt_id': turn,
    'start_s': start_s,
    'end_s': end_s,
    'speaker': f'Ses{turn_match.group(1)}{turn_match.group(2)}',
    'consensus': consensus,
    'valence': valence,
    'arousal': arousal,
    'dominance': dominance,
  }


def _parse_dimensions(text: str, path: str, line: int) -> dict[str, float]:
  found = {name: float(value) for name, value in _DIMENSION.findall(_split_comment(text)[0])}
  if set(found) != {'val', 'act', 'dom'}:
    raise InputError(f'expected "val v; act a; dom d;", found {text.strip()!r}', path=path, line=line)
  return {'valence': found['val'], 'arousal': found['act'], 'dominance': found['dom']}


def _parse_labels(text: str, path: str, line: int) -> tuple[list[str], str | None]:
  """(label texts in order, repeats dropped; comment) of a C- line."""
  labels_part, comment = _split_comment(text)
  texts = list(dict.fromkeys(t.strip() for t in labels_part.split(';') if t.strip()))
  if not texts:
    raise InputError('evaluator line has no label', path=path, line=line)
  return texts, comment


def _block_votes(
  turn: str, rater_prefix: str, categorical: dict, dimensional: dict, self_evaluations: bool
) -> list[dict]:
  """Vote rows of one utterance from its C- lines, A- ratings attached by evaluator id."""
  votes = []
  for evaluator, (texts, comment) in categorical.items():
    if _SELF_EVALUATOR.match(evaluator) and not self_evaluations:
      continue
    dims = dimensional.get(evaluator, {})
    votes.extend(
      {
        'utt_id': turn,
        'rater': f'{rater_prefix}/{evaluator}',
        'source': tables.HUMAN,
        'label': labels_lib.parse_label(text),
        'weight': 1.0 / len(texts),
        'text': text,
        'comment': comment,
        **dims,
      }
      for text in texts
    )
  return votes


class _SkippedLines:
  """A run of lines a lenient read leaves out: a broken header (or an unexpected line that may be
  one) and every evaluator line after it, up to the next good header. Counted once, with its place."""

  def __init__(self, error: InputError, key: str):
    self.error, self.key, self.evaluator_lines, self.last = error, key, 0, error.line

  def count(self, skipped: SkipCounter) -> None:
    where = f'{self.error.path}:{self.error.line}'
    detail = (
      f'{where}: {self.error.reason}; skipped with the {self.evaluator_lines} evaluator lines after it'
      f' (to line {self.last}): whose votes they are is unknown'
    )
    skipped.skip(detail, reason=f'{self.key}: utterance block skipped')


def _read_evaluation(
  path: str, session: int, self_evaluations: bool, lenient: bool, skipped: SkipCounter
) -> list[tuple[dict, list[dict]]]:
  """(utterance row, its vote rows) for each block of one EmoEvaluation file, in file order.

  Strict: the first malformed line raises. Lenient: a malformed line inside a good block is skipped
  alone; a header that does not parse, or any line that is neither a header nor an evaluator line
  (a truncated header looks like that), skips itself and every evaluator line up to the next good
  header, counted once: those votes are never given to the utterance before it. A second line of
  one evaluator in a block (lines of two utterances run together) skips that whole utterance.
  """
  dialog = os.path.splitext(os.path.basename(path))[0]
  try:
    with open(path, encoding=ENCODING, newline='') as f:
      lines = _lines(f.read())
  except OSError as e:
    raise InputError(f'cannot read: {e}', path=path) from e
  blocks = []  # [header fields, C- lines by evaluator, A- ratings by evaluator, corrupt error or None]
  current = None  # the block evaluator lines go to
  skipping = None  # a _SkippedLines run in progress

  def end_skipping():
    nonlocal skipping
    if skipping is not None:
      skipping.count(skipped)
      skipping = None

  for line_number, raw in enumerate(lines, 1):
    text = raw.strip()
    if not text or text.startswith('%'):
      continue
    header_match = _HEADER.match(text)
    line_match = None if header_match else _EVALUATOR_LINE.match(text)
    if header_match or not line_match:
      end_skipping()
      current = None
      what = 'malformed utterance header' if text.startswith('[') else 'unexpected line'
      try:
        if not header_match:
          raise InputError(f'{what} {text[:60]!r}', path=path, line=line_number)
        current = [_parse_header(header_match, session, dialog, path, line_number), {}, {}, None]
        blocks.append(current)
      except InputError as e:
        if not lenient:
          raise
        skipping = _SkippedLines(e, e.reason if header_match else what)
      continue
    if skipping is not None:
      skipping.evaluator_lines += 1
      skipping.last = line_number
      continue
    try:
      if current is None:
        raise InputError('evaluator line before any utterance header', path=path, line=line_number)
      kind, evaluator, rest = line_match.groups()
      lines_of_kind = current[1] if kind == 'C' else current[2]
      if evaluator in lines_of_kind:
        error = InputError(f'second {kind}-{evaluator} line in one utterance', path=path, line=line_number)
        if not lenient:
          raise error
        current[3] = current[3] or error
        continue
      lines_of_kind[evaluator] = (
        _parse_labels(rest, path, line_number) if kind == 'C' else _parse_dimensions(rest, path, line_number)
      )
    except InputError as e:
      handle(e, lenient, skipped)
  end_skipping()
  result = []
  for header, categorical, dimensional, corrupt in blocks:
    if corrupt is not None:
      skipped.skip(
        InputError(
          f'{corrupt.reason} (lines of two utterances run together?): utterance {header["utt_id"]} skipped',
          path=path,
          line=corrupt.line,
        ),
        reason=f'{corrupt.reason}: utterance skipped',
      )
      continue
    votes = _block_votes(header['utt_id'], f'Session{session}', categorical, dimensional, self_evaluations)
    result.append((header, votes))
  return result


def _read_transcripts(path: str, lenient: bool, skipped: SkipCounter) -> dict[str, str]:
  """turn id -> text of one transcriptions file ({} where the file is absent)."""
  if not os.path.isfile(path):
    return {}
  transcripts = {}
  with open(path, encoding=ENCODING, newline='') as f:
    for line_number, raw in enumerate(_lines(f.read()), 1):
      if not raw.strip():
        continue
      match = _TRANSCRIPT.match(raw.strip())
      if not match:
        handle(
          InputError(
            f'expected "<turn> [start-end]: text", found {raw.strip()[:60]!r}', path=path, line=line_number
          ),
          lenient,
          skipped,
        )
        continue
      transcripts[match.group(1)] = match.group(2).strip()
  return transcripts


def _place_audio(utterance: dict, session_dir: str, dialog: str) -> None:
  """Sets audio_path (and start/end where the audio is the whole dialog), per the docstring."""
  sentence = existing_audio(
    os.path.join(session_dir, 'sentences', 'wav', dialog, f'{utterance["utt_id"]}.wav')
  )
  dialog_audio = existing_audio(os.path.join(session_dir, 'dialog', 'wav', f'{dialog}.wav'))
  utterance['duration_s'] = utterance['end_s'] - utterance['start_s']
  utterance['audio_path'] = sentence or dialog_audio
  if sentence or not dialog_audio:
    utterance['start_s'] = utterance['end_s'] = float('nan')


def _protocol_label_set(protocol: str, outside_votes: str, label_set: str | None) -> labels_lib.LabelSet:
  """The classes of ``protocol`` (before 'other' is added for outside_votes='other'), checked against
  the label set the user named."""
  if protocol == 'any_in_set':
    return labels_lib.get_label_set(label_set or 'iemocap4')
  base = labels_lib.get_label_set('iemocap4' if protocol == '4class' else 'iemocap')
  expected = protocols.with_other(base) if outside_votes == 'other' else base
  hint = 'choose --iemocap_protocol=any_in_set for another label set'
  protocols.check_label_set(label_set, expected, protocol, NAME, hint)
  return base


def _consensus_reasons(utterances: list[dict], protocol: str) -> list[str | None]:
  """Step 1 of the protocol (perax.data.corpora.protocols): the consensus codes it leaves out."""
  if protocol != '4class':
    return [None] * len(utterances)
  codes = {label: code for code, label in labels_lib.CODE_TABLES[NAME].items()}
  return [
    None
    if u['consensus'] in FOUR_CLASS_CONSENSUS
    else f'consensus {codes[u["consensus"]]} outside the 4 classes'
    for u in utterances
  ]


def load(
  path: os.PathLike | str,
  *,
  lenient: bool = False,
  self_evaluations: bool = False,
  test_session: int = 5,
  dev_session: int | None = None,
  protocol: str = '4class',
  outside_votes: str = 'drop',
  label_set: str | None = None,
) -> base.Corpus:
  """Loads IEMOCAP's per-evaluator labels (format, protocols and choices in the module docstring).

  Args:
    path: the release directory holding Session1..Session5.
    lenient: skip and count malformed lines (a malformed header skips its whole utterance).
    self_evaluations: also take the actors' self-evaluations (C-F*, C-M*) as votes.
    test_session: the session whose utterances form the test split.
    dev_session: the session forming the dev split, or None for none.
    protocol: '4class' (default), 'any_in_set', 'full' or 'none' (module docstring).
    outside_votes: 'drop' (default) or 'other': what becomes of votes outside the protocol's classes.
    label_set: the label set the run uses: the classes of 'any_in_set' (default iemocap4); for
      '4class' and 'full' it must be the protocol's own set (checked), None accepts it.

  Raises:
    InputError: malformed input (file and line), no sessions, a turn id seen twice, an unknown
      protocol, or a label set that disagrees with the protocol.
  """
  if protocol not in PROTOCOLS:
    raise InputError(f'unknown IEMOCAP protocol {protocol!r}; known: {", ".join(PROTOCOLS)}')
  if test_session not in SESSIONS or (dev_session is not None and dev_session not in SESSIONS):
    raise InputError(f'sessions must be in {SESSIONS}: test {test_session}, dev {dev_session}')
  if dev_session == test_session:
    raise InputError(f'dev_session and test_session are both {test_session}')
  classes = None if protocol == 'none' else _protocol_label_set(protocol, outside_votes, label_set)
  root = os.path.abspath(os.fspath(path))
  skipped = SkipCounter()
  utterances, votes, seen = [], [], set()
  for session in SESSIONS:
    session_dir = os.path.join(root, f'Session{session}')
    files = sorted(glob.glob(os.path.join(session_dir, 'dialog', 'EmoEvaluation', '[!.]*.txt')))
    for evaluation_path in files:
      dialog = os.path.splitext(os.path.basename(evaluation_path))[0]
      blocks = _read_evaluation(evaluation_path, session, self_evaluations, lenient, skipped)
      transcripts = _read_transcripts(
        os.path.join(session_dir, 'dialog', 'transcriptions', f'{dialog}.txt'), lenient, skipped
      )
      for utterance, utterance_votes in blocks:
        if utterance['utt_id'] in seen:
          handle(
            InputError('turn id repeats', path=evaluation_path, item=utterance['utt_id']), lenient, skipped
          )
          continue
        seen.add(utterance['utt_id'])
        _place_audio(utterance, session_dir, dialog)
        utterance.update(
          transcript=transcripts.get(utterance['utt_id']),
          fold=f'Session{session}',
          split=('test' if session == test_session else 'dev' if session == dev_session else 'train'),
          corpus=NAME,
        )
        utterances.append(utterance)
        votes.extend(utterance_votes)
  if not utterances:
    raise InputError('no utterances in Session*/dialog/EmoEvaluation/*.txt', path=root)
  columns = list(tables.UTTERANCE_SCHEMA.names) + ['consensus', 'valence', 'arousal', 'dominance']
  utterance_table = tables.utterances_table({c: [u.get(c) for u in utterances] for c in columns})
  vote_table = tables.votes_table(votes)
  options = {
    'protocol': protocol,
    'outside_votes': outside_votes,
    'self_evaluations': self_evaluations,
    'test_session': test_session,
    'dev_session': dev_session,
  }
  if classes is None:
    report = protocols.unapplied(NAME, utterance_table, vote_table, options)
  else:
    utterance_table, vote_table, report = protocols.apply(
      NAME,
      protocol,
      utterance_table,
      vote_table,
      label_set=classes,
      outside_votes=outside_votes,
      drop_reasons=_consensus_reasons(utterances, protocol),
      options=options,
    )
  return base.Corpus(NAME, utterance_table, vote_table, skipped, protocol=report)
