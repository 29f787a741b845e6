"""A small progress reporter for long loops: done/total, rate and ETA, at most every few seconds.

  progress = Progress(total=len(items), unit='utt', what='proxies')
  for batch in batches:
    ...
    progress.update(len(batch))
  progress.close()

Lines go through :mod:`perax.core.log` and read
``14:02:31 proxies: 120/535 utt (22.4%) 8.31 utt/s, elapsed 0:00:14, ETA 0:00:50``. The rate
counts only work done since the reporter started (``update(n, resumed=True)`` records work found
already done, e.g. shards of an earlier run, without letting it inflate the rate).
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable

from perax.core import log


def _clock_str(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(round(seconds))))


@dataclasses.dataclass
class Progress:
  """Counts work towards ``total`` and prints a line with rate and ETA every ``every_s`` seconds.

  Attributes:
    total: units of work in the whole job (0 or more).
    unit: the unit's name, printed after counts and in the rate.
    what: a prefix naming the job.
    every_s: minimum seconds between printed lines (the final line is always printed).
    print_fn: where lines go; perax.core.log.info by default.
    clock: a monotonic clock in seconds (injectable for tests).
  """

  total: int
  unit: str = 'items'
  what: str = 'progress'
  every_s: float = 10.0
  print_fn: Callable[[str], None] | None = None
  clock: Callable[[], float] = time.monotonic

  def __post_init__(self):
    if self.total < 0:
      raise ValueError(f'total must be >= 0, got {self.total}')
    self.done = 0
    self._resumed = 0
    self._start = self.clock()
    self._last_print = None
    self._printed_done = None
    if self.print_fn is None:
      self.print_fn = log.info

  @property
  def rate(self) -> float:
    """Units per second of work done since the start (resumed work excluded); 0 before any."""
    elapsed = self.clock() - self._start
    worked = self.done - self._resumed
    return worked / elapsed if elapsed > 0 and worked > 0 else 0.0

  @property
  def eta_s(self) -> float | None:
    """Seconds left at the current rate, or None while the rate is unknown."""
    rate = self.rate
    return (self.total - self.done) / rate if rate > 0 else None

  def line(self) -> str:
    """The status line for the current state."""
    share = f' ({100.0 * self.done / self.total:.1f}%)' if self.total else ''
    eta = self.eta_s
    return (
      f'{self.what}: {self.done}/{self.total} {self.unit}{share} '
      f'{self.rate:.3g} {self.unit}/s, elapsed {_clock_str(self.clock() - self._start)}, '
      f'ETA {"?" if eta is None else _clock_str(eta)}'
    )

  def update(self, n: int = 1, resumed: bool = False) -> None:
    """Adds ``n`` units; ``resumed`` marks units that were already done before this run."""
    self.done += n
    if resumed:
      self._resumed += n
    now = self.clock()
    due = self._last_print is None or now - self._last_print >= self.every_s
    if due or self.done >= self.total:
      self._print(now)

  def _print(self, now: float) -> None:
    self._last_print = now
    self._printed_done = self.done
    self.print_fn(self.line())

  def close(self) -> None:
    """Prints the final line (unless the last update already printed it)."""
    if self._printed_done != self.done:
      self._print(self.clock())
