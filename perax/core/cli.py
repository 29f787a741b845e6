"""What every launcher shares: absl's app.run, with bad input reported as one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from perax.core import compile_cache, distributed
from perax.core.errors import InputError


def run(main: Callable[[Sequence[str]], object]) -> None:
  """Runs an absl ``main``; an InputError ends it with exit code 2 and its message (file and line).

  Bad input is the user's to fix, so it gets the location and the reason, not a traceback. Library
  logs (Orbax's, JAX's) are kept to warnings unless --verbosity is given. Before ``main``, the
  process joins a multi-process run when its flags ask (perax.core.distributed) and JAX's persistent
  compilation cache is set up (perax.core.compile_cache).
  """

  def guarded(argv: Sequence[str]) -> object:
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    try:
      distributed.initialize_from_flags()
      compile_cache.configure_from_flags()
      return main(argv)
    except InputError as error:
      print(f'error: {error}', file=sys.stderr)
      sys.exit(2)

  app.run(guarded)
