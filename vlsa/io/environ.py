"""Temporary changes to this process's environment, undone on exit.

Some settings are read from the environment only by processes started later (glibc's allocator tunables,
a service's endpoint for its clients); the caller sets them for a while and must leave the variables as
they were, including absent ones.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def patched_environ(values: dict[str, str], unset: tuple[str, ...] = ()) -> Iterator[None]:
    """Set ``values`` and remove ``unset`` in ``os.environ``; on exit every named variable is restored
    (a variable that was absent is removed again)."""
    saved = {key: os.environ.get(key) for key in (*values, *unset)}
    os.environ.update(values)
    for key in unset:
        os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
