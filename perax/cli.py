"""What every launcher shares: absl's app.run, with bad input reported as one clear line."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging

from perax.errors import InputError


def run(main: Callable[[Sequence[str]], object]) -> None:
  """Runs an absl ``main``; an InputError ends it with exit code 2 and its message (file and line).

  Bad input is the user's to fix, so it gets the location and the reason, not a traceback. Library
  logs (Orbax's, JAX's) are kept to warnings unless --verbosity is given.
  """

  def guarded(argv: Sequence[str]) -> object:
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except InputError as error:
      print(f'error: {error}', file=sys.stderr)
      sys.exit(2)

  app.run(guarded)
