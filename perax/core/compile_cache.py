"""JAX's persistent compilation cache, on by default in every launcher.

A proxy configuration compiles one program per feature bucket x prompt bucket x mode, and a 7B train
step takes tens of seconds to compile; the cache makes a rerun (a resumed job, the next fold, the next
host) skip them. ``--compilation_cache_dir`` moves it (default ``~/.cache/perax/jax``); an empty
value turns it off.
"""

from __future__ import annotations

import os

from absl import flags

DEFAULT_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'perax', 'jax')

COMPILATION_CACHE_DIR = flags.DEFINE_string(
  'compilation_cache_dir',
  os.environ.get('PERAX_COMPILATION_CACHE_DIR', DEFAULT_DIR),
  "JAX's persistent compilation cache ('' disables it; env PERAX_COMPILATION_CACHE_DIR sets the default).",
)


def configure(directory: str | None) -> str | None:
  """Points JAX's persistent cache at ``directory`` (None or '' disables it); returns what is used."""
  import jax

  if not directory:
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  os.makedirs(directory, exist_ok=True)
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', directory)
  # Cache every program that took real time to compile, not only the slowest ones.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory


def configure_from_flags() -> str | None:
  return configure(COMPILATION_CACHE_DIR.value)
