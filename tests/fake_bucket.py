"""A stand-in for a bucket in tests: `gs://` paths served by `etils.epath` from a local directory.

`etils.epath.testing.mock_epath` swaps epath's storage backends; here every `gs://b/x` becomes
`<root>/b/x`, and a file cannot be opened for appending or updating (an object store cannot do
either). Code that reaches a `gs://` path through `open`, `os` or `numpy` instead of `epath`
sees a relative local path (`gs:/b/x`) and fails or writes there: run such code in a scratch
working directory and check it stays empty.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator

from etils.epath import testing

PREFIX = "gs://"


@contextlib.contextmanager
def fake_bucket(root: pathlib.Path) -> Iterator[pathlib.Path]:
  """Serves `gs://...` from `root` for the block; yields `root`."""
  root.mkdir(parents=True, exist_ok=True)

  def local(p):
    s = os.fspath(p)
    return os.path.join(root, s[len(PREFIX):]) if s.startswith(PREFIX) else s

  def remote(p):
    s = os.fspath(p)
    return PREFIX + os.path.relpath(s, root) if s.startswith(str(root) + os.sep) else s

  def one(original, p, *args, **kwargs):
    return original(local(p), *args, **kwargs)

  def two(original, p, q, *args, **kwargs):
    return original(local(p), local(q), *args, **kwargs)

  def open_(original, p, mode):
    if os.fspath(p).startswith(PREFIX) and ("a" in mode or "+" in mode):
      raise OSError(f"{p}: an object cannot be opened with mode {mode!r}")
    return original(local(p), mode)

  def glob_(original, pattern):
    return [remote(m) for m in original(local(pattern))]

  def walk_(original, top, **kwargs):
    for d, dirs, names in original(local(top), **kwargs):
      yield remote(d), dirs, names

  with testing.mock_epath(open=open_, exists=one, isdir=one, listdir=one, glob=glob_, walk=walk_,
                          makedirs=one, mkdir=one, remove=one, rmtree=one, stat=one, rename=two,
                          replace=two, copy=two):
    yield root
