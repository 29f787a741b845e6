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
"""

from __future__ import annotations

import glob
import os
import re

from perax.core.errors import InputError, SkipCounter, handle
from perax.data import labels as labels_lib
from perax.data import tables
from perax.data.corpora import base
from perax.data.corpora.audio_info import existing_audio

NAME = 'iemocap'
SESSIONS = (1, 2, 3, 4, 5)
ENCODING = 'latin-1'

_NUMBER = r'(\d+(?:\.\d*)?)'
_HEADER = re.compile(rf'^\[\s*{_NUMBER}\s*-\s*{_NUMBER}\s*\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]\s*$')
_EVALUATOR_LINE = re.compile(r'^([CA])-([A-Za-z]+\d*)\s*:(.*)$')
_TURN = re.compile(r'^Ses(\d{2})[FM]_\S+_([FM])[A-Za-z]*\d+$')
_DIMENSION = re.compile(r'\b(val|act|dom)\s+(-?\d+(?:\.\d*)?)')
_TRANSCRIPT = re.compile(r'^(\S+)\s+\[[^\]]*\]\s*:\s?(.*)$')
_SELF_EVALUATOR = re.compile(r'^[FM]\d*$')


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


def _read_evaluation(
  path: str, session: int, self_evaluations: bool, lenient: bool, skipped: SkipCounter
) -> list[tuple[dict, list[dict]]]:
  """(utterance row, its vote rows) for each block of one EmoEvaluation file, in file order."""
  dialog = os.path.splitext(os.path.basename(path))[0]
  try:
    with open(path, encoding=ENCODING) as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise InputError(f'cannot read: {e}', path=path) from e
  blocks = []  # (header fields, C- lines by evaluator, A- ratings by evaluator)
  in_skipped_block = False
  for line_number, raw in enumerate(lines, 1):
    text = raw.strip()
    if not text or text.startswith('%'):
      continue
    try:
      header_match = _HEADER.match(text)
      if header_match:
        in_skipped_block = True  # until the header parses: its evaluator lines go with it
        blocks.append((_parse_header(header_match, session, dialog, path, line_number), {}, {}))
        in_skipped_block = False
        continue
      if in_skipped_block:
        continue
      line_match = _EVALUATOR_LINE.match(text)
      if not line_match:
        raise InputError(f'unexpected line {text[:60]!r}', path=path, line=line_number)
      if not blocks:
        raise InputError('evaluator line before any utterance header', path=path, line=line_number)
      kind, evaluator, rest = line_match.groups()
      _, categorical, dimensional = blocks[-1]
      lines_of_kind = categorical if kind == 'C' else dimensional
      if evaluator in lines_of_kind:
        raise InputError(f'second {kind}-{evaluator} line in one utterance', path=path, line=line_number)
      lines_of_kind[evaluator] = (
        _parse_labels(rest, path, line_number) if kind == 'C' else _parse_dimensions(rest, path, line_number)
      )
    except InputError as e:
      handle(e, lenient, skipped)
  return [
    (header, _block_votes(header['utt_id'], f'Session{session}', categorical, dimensional, self_evaluations))
    for header, categorical, dimensional in blocks
  ]


def _read_transcripts(path: str, lenient: bool, skipped: SkipCounter) -> dict[str, str]:
  """turn id -> text of one transcriptions file ({} where the file is absent)."""
  if not os.path.isfile(path):
    return {}
  transcripts = {}
  with open(path, encoding=ENCODING) as f:
    for line_number, raw in enumerate(f.read().splitlines(), 1):
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


def load(
  path: os.PathLike | str,
  *,
  lenient: bool = False,
  self_evaluations: bool = False,
  test_session: int = 5,
  dev_session: int | None = None,
) -> base.Corpus:
  """Loads IEMOCAP's per-evaluator labels (format and choices in the module docstring).

  Args:
    path: the release directory holding Session1..Session5.
    lenient: skip and count malformed lines (a malformed header skips its whole utterance).
    self_evaluations: also take the actors' self-evaluations (C-F*, C-M*) as votes.
    test_session: the session whose utterances form the test split.
    dev_session: the session forming the dev split, or None for none.

  Raises:
    InputError: malformed input (file and line), no sessions, a turn id seen twice.
  """
  if test_session not in SESSIONS or (dev_session is not None and dev_session not in SESSIONS):
    raise InputError(f'sessions must be in {SESSIONS}: test {test_session}, dev {dev_session}')
  if dev_session == test_session:
    raise InputError(f'dev_session and test_session are both {test_session}')
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
  return base.Corpus(NAME, utterance_table, tables.votes_table(votes), skipped)
