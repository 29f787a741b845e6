"""perax.core.log's messages collected as '[stage] message' lines, for tests that check what was said."""

import contextlib
import logging
from collections.abc import Iterator

from perax.core import log


class Lines(logging.Handler):
  """Collects perax.core.log's messages as '[stage] message' (or the bare message without a stage)."""

  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines.append(f'[{record.stage}] {record.getMessage()}' if record.stage else record.getMessage())


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
  """The lines logged while the block runs."""
  handler = Lines()
  log.logger().addHandler(handler)
  try:
    yield handler.lines
  finally:
    log.logger().removeHandler(handler)
