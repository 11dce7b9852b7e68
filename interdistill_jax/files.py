"""The workdir's files, on local disk or in a bucket (`gs://...`), through `etils.epath`.

Every read and write of a workdir artifact goes through this module (paths stay strings, built
by `layout.py`; `os.path.join` spells `gs://bucket/run/labels` as well as `runs/x/labels`). A
path that starts with a scheme (`gs://`, `s3://`, `az://`, `hf://`) is *remote* and goes to
`epath.Path`'s object-store backend; any other is local, and every operation does exactly what
`os`, `shutil` and `numpy` did before (same files, same bytes, same modes, same atomicity).

Atomicity: a local atomic write goes to a temporary file beside the target, is fsynced and then
`os.replace`d over it, so a kill leaves the old file or the new one. An object store replaces an
object in one step when its upload completes (a reader sees the old object or the new one, never
a part), so a remote atomic write is a plain upload. What an object store cannot do in one step
is said where it matters: `move` of a directory copies and deletes object by object, and
`append_text` rewrites the object.

Inherently local, and so not here: the workdir lock (`locking.py`: fcntl), SQLite call caches
(`teachers/cache.py` keeps a remote workdir's cache in a local mirror), TensorBoard events
(`events.py`: written beside a local workdir only), memory-mapped arrays (remote arrays are read
whole), and the data set, model and corpus-index files outside the workdir.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO

import numpy as np
from etils import epath

PathLike = str | os.PathLike
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_local(path: PathLike) -> bool:
  """Whether `path` is on local disk (no `scheme://` prefix)."""
  return _SCHEME.match(os.fspath(path)) is None


def path(p: PathLike) -> epath.Path:
  """`p` as an `epath.Path`; a scheme `epath` does not know is a ValueError naming it (rather
  than a local directory called `foo:`)."""
  text = os.fspath(p)
  match = _SCHEME.match(text)
  try:
    out = epath.Path(text)
  except KeyError:  # epath's word for a scheme it has no class for
    out = None
  if match and (out is None or not str(out).startswith(match.group(0))):
    raise ValueError(f"{text}: unsupported storage {match.group(0)!r} (local paths, gs://, s3://, "
                     "az:// and hf:// are)")
  return out


def storage_problem(p: PathLike) -> str | None:
  """Why `p`'s storage cannot be reached from here (an unknown scheme, or the package `epath`
  needs for it missing), or None. Local paths are always reachable."""
  if is_local(p):
    return None
  try:
    path(p)
  except ValueError as e:
    return str(e)
  import importlib.util  # noqa: PLC0415
  if importlib.util.find_spec("tensorflow") is not None:
    return None  # epath reaches buckets through tf.io.gfile then
  import fsspec  # noqa: PLC0415 (installed with etils[epath])
  try:
    fsspec.get_filesystem_class(_SCHEME.match(os.fspath(p)).group(1))
  except ImportError as e:
    return f"{os.fspath(p)}: {e} (etils.epath reaches it through fsspec)"
  return None


def absolute(p: PathLike) -> str:
  """`os.path.abspath` of a local path; a remote one is absolute already."""
  return os.path.abspath(p) if is_local(p) else os.fspath(p)


# --- looking ----------------------------------------------------------------------------------

def exists(p: PathLike) -> bool:
  return path(p).exists()


def is_dir(p: PathLike) -> bool:
  return path(p).is_dir()


def is_file(p: PathLike) -> bool:
  q = path(p)
  return q.exists() and not q.is_dir()


def listdir(p: PathLike) -> list[str]:
  """The names in directory `p`, sorted."""
  if is_local(p):
    return sorted(os.listdir(p))  # every name (epath leaves out names ending in "~")
  return sorted(child.name for child in path(p).iterdir())


def glob(directory: PathLike, pattern: str) -> list[str]:
  """The paths in `directory` whose names match `pattern` (no `**`), sorted."""
  return sorted(os.fspath(m) for m in path(directory).glob(pattern))


# --- reading --------------------------------------------------------------------------------

def open_file(p: PathLike, mode: str = "r") -> IO:
  """`p` opened for reading (`r`, `rb`) or writing in one go (`w`, `wb`); text is UTF-8. Use
  `atomic_write_*` for artifacts, which a kill must not leave half written."""
  if mode not in ("r", "rb", "w", "wb"):
    raise ValueError(f"mode {mode!r}: files.open_file reads or writes whole files (r, rb, w, wb)")
  if "w" in mode:
    makedirs(os.path.dirname(os.fspath(p)) or ".")
  return path(p).open(mode)


def read_text(p: PathLike) -> str:
  with open_file(p, "r") as f:
    return f.read()


def read_bytes(p: PathLike) -> bytes:
  with open_file(p, "rb") as f:
    return f.read()


# --- writing --------------------------------------------------------------------------------

def makedirs(p: PathLike) -> None:
  """Creates directory `p` and its parents (nothing to do in a bucket: prefixes are implicit)."""
  path(p).mkdir(parents=True, exist_ok=True)


def atomic_write_bytes(p: PathLike, data: bytes) -> None:
  """Writes `p` whole or not at all (see the module docstring); creates its directory."""
  p = os.fspath(p)
  parent = os.path.dirname(p) or "."
  makedirs(parent)
  if not is_local(p):
    with path(p).open("wb") as f:  # one object, visible once the upload completes
      f.write(data)
    return
  fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, p)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_text(p: PathLike, text: str) -> None:
  """`atomic_write_bytes` of UTF-8 text."""
  atomic_write_bytes(p, text.encode("utf-8"))


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes `p` in place (not atomic on local disk: for files a kill may cut, like plots)."""
  with open_file(p, "wb") as f:
    f.write(data)


def append_text(p: PathLike, text: str) -> None:
  """Appends `text` to `p` (created when absent) and, on local disk, fsyncs it.

  An object cannot be appended to: in a bucket the object is read and written again with `text`
  at its end (each append atomic; the cost grows with the file, fine for logs of a few thousand
  lines like labels.jsonl and metrics.jsonl)."""
  p = os.fspath(p)
  makedirs(os.path.dirname(p) or ".")
  if not is_local(p):
    old = read_bytes(p) if exists(p) else b""
    atomic_write_bytes(p, old + text.encode("utf-8"))
    return
  with open(p, "a", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def copy_file(src: PathLike, dst: PathLike) -> None:
  """Copies file `src` to `dst` (overwritten), either of them local or remote."""
  makedirs(os.path.dirname(os.fspath(dst)) or ".")
  if is_local(src) and is_local(dst):
    shutil.copyfile(src, dst)
    return
  with open_file(src, "rb") as f, path(dst).open("wb") as g:
    shutil.copyfileobj(f, g)


def copy_tree(src: PathLike, dst: PathLike) -> None:
  """Copies directory `src` to `dst` (which must not exist) file by file, either of them local
  or remote."""
  if is_local(src) and is_local(dst):
    shutil.copytree(src, dst)
    return
  if exists(dst):
    raise FileExistsError(f"{dst} exists: cannot copy {src} there")
  for name in listdir(src):
    s, d = os.path.join(os.fspath(src), name), os.path.join(os.fspath(dst), name)
    if is_dir(s):
      copy_tree(s, d)
    else:
      copy_file(s, d)


# --- moving and removing --------------------------------------------------------------------

def move(src: PathLike, dst: PathLike) -> None:
  """Moves file or directory `src` to `dst`, which must not exist (its parent is created).

  On local disk a rename (`os.replace`: atomic within one file system, and the workdir is one).
  In a bucket objects are copied, then the originals deleted: a kill in between leaves objects
  at both places, never at none."""
  if exists(dst) or (is_local(dst) and os.path.lexists(dst)):
    raise FileExistsError(f"{dst} exists: cannot move {src} there")
  makedirs(os.path.dirname(os.fspath(dst)) or ".")
  if is_local(src) and is_local(dst):
    os.replace(src, dst)
  elif is_dir(src):
    copy_tree(src, dst)
    remove_tree(src)
  else:
    copy_file(src, dst)
    remove(src)


def remove(p: PathLike, *, missing_ok: bool = True) -> None:
  """Removes file `p`."""
  path(p).unlink(missing_ok=missing_ok)


def remove_tree(p: PathLike, *, missing_ok: bool = True) -> None:
  """Removes directory `p` and everything under it."""
  path(p).rmtree(missing_ok=missing_ok)


# --- arrays ---------------------------------------------------------------------------------

def _array_bytes(save, *args, **kwargs) -> bytes:
  buffer = io.BytesIO()
  save(buffer, *args, **kwargs)
  return buffer.getvalue()


def save_npy(p: PathLike, array: np.ndarray) -> None:
  """`np.save` to `p`, atomically (a partial `.npy` is never left at `p`)."""
  p = os.fspath(p)
  if not is_local(p):
    atomic_write_bytes(p, _array_bytes(np.save, array))
    return
  makedirs(os.path.dirname(p) or ".")
  tmp = p[:-len(".npy")] + ".tmp.npy" if p.endswith(".npy") else p + ".tmp.npy"
  np.save(tmp, array)
  os.replace(tmp, p)


def load_npy(p: PathLike, *, mmap: bool = False) -> np.ndarray:
  """`np.load` of a `.npy` file; `mmap` maps a local file read-only (a remote one is read whole:
  an object cannot be mapped)."""
  if is_local(p):
    return np.load(p, mmap_mode="r" if mmap else None)
  return np.load(io.BytesIO(read_bytes(p)))


def save_npz(p: PathLike, **arrays: np.ndarray) -> None:
  """`np.savez` to `p`, atomically."""
  p = os.fspath(p)
  if not is_local(p):
    atomic_write_bytes(p, _array_bytes(np.savez, **arrays))
    return
  makedirs(os.path.dirname(p) or ".")
  tmp = p + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, p)


def load_npz(p: PathLike) -> dict[str, np.ndarray]:
  """Every array of an `.npz` file, read whole."""
  source = os.fspath(p) if is_local(p) else io.BytesIO(read_bytes(p))
  with np.load(source) as npz:
    return {name: npz[name] for name in npz.files}


# --- what must be local -----------------------------------------------------------------------

@contextlib.contextmanager
def local_dir(p: PathLike) -> Iterator[str]:
  """Directory `p` as a local directory for the block (a tool that reads local folders only,
  like the Hub upload): `p` itself when local, else a temporary download of it."""
  if is_local(p):
    yield os.fspath(p)
    return
  with tempfile.TemporaryDirectory(prefix="interdistill-") as tmp:
    copy_tree(p, os.path.join(tmp, "d"))
    yield os.path.join(tmp, "d")
