"""Input errors that name where the bad input is, and a counter for lenient skipping.

Every reader in perax reports malformed input as a :class:`InputError` naming the file and the
1-based line (or the item id), never as a bare traceback.  Readers that accept ``lenient=True`` skip
such lines instead, and count them in a :class:`SkipCounter`, which the caller reports.
"""

from __future__ import annotations

import collections
import dataclasses
import os


class InputError(ValueError):
  """Malformed input, with its location, in one line (line breaks of a wrapped message are joined).

  Attributes:
    path: the file (or table) holding the bad input.
    line: 1-based line number, or None where the input has no lines (a Parquet row uses ``item``).
    item: an item id (utt_id, row index) where a line number does not apply.
  """

  def __init__(
    self,
    message: str,
    path: os.PathLike | str | None = None,
    line: int | None = None,
    item: str | None = None,
  ):
    self.path = None if path is None else str(path)
    self.line = line
    self.item = item
    # One line always: a wrapped library message (pyarrow, libsndfile) may span several.
    message = ' / '.join(part.strip() for part in str(message).splitlines() if part.strip())
    self.reason = message
    where = []
    if self.path is not None:
      where.append(self.path if line is None else f'{self.path}:{line}')
    if item is not None:
      where.append(f'item {item!r}')
    super().__init__(f'{", ".join(where)}: {message}' if where else message)


@dataclasses.dataclass
class SkipCounter:
  """Counts what a lenient reader skipped, by reason, keeping the first few examples.

  Nothing is dropped silently: loaders return their counter, and launchers print ``summary()``.
  """

  max_examples: int = 5
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: list = dataclasses.field(default_factory=list)

  def skip(self, error: InputError | str, reason: str | None = None) -> None:
    key = reason or (error.reason if isinstance(error, InputError) else str(error))
    self.counts[key] += 1
    if len(self.examples) < self.max_examples:
      self.examples.append(str(error))

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def merge(self, other: SkipCounter) -> None:
    self.counts.update(other.counts)
    room = self.max_examples - len(self.examples)
    self.examples.extend(other.examples[: max(room, 0)])

  def summary(self) -> str:
    if not self.total:
      return 'skipped 0 items'
    reasons = '; '.join(f'{n} x {r}' for r, n in self.counts.most_common())
    return f'skipped {self.total} items ({reasons}); first: {self.examples[0]}'


def handle(error: InputError, lenient: bool, skipped: SkipCounter | None) -> None:
  """Raises ``error`` unless ``lenient``, in which case it is counted in ``skipped``."""
  if not lenient:
    raise error
  if skipped is None:
    raise ValueError('lenient reading needs a SkipCounter to count what it skips') from error
  skipped.skip(error)
