"""UTF-8 input files read line by line, and the error every reader raises on malformed input.

Every reader of a user's file fails with a `DataError` naming the file, the line and the problem,
so a user can fix the line instead of guessing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from interdistill_jax import files


class DataError(ValueError):
  """Malformed input: carries the file, the line number and the reason."""

  def __init__(self, path: str | os.PathLike, line: int | None, problem: str):
    self.path, self.line, self.problem = str(path), line, problem
    where = f"{path}:{line}" if line is not None else f"{path}"
    super().__init__(f"{where}: {problem}")


def lines(path: str | os.PathLike, opener=None) -> Iterator[tuple[int, str]]:
  """A UTF-8 text file's lines, numbered from 1: a byte that is not UTF-8 is a DataError that
  names its line and column, not a decoder's offset into the file. Opened with `opener(path,
  "rb")` (default: `files.open_file`, local or in a bucket)."""
  opener = opener or files.open_file
  with opener(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      yield lineno, decode(raw, path, lineno)


def decode(raw: bytes, path, lineno: int | None) -> str:
  """One line's bytes as text; not UTF-8 is a DataError naming the line and column."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(path, lineno, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                    f"{e.start + 1})") from None


def jsonl_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
  """(line number, object) of each non-blank line of a JSONL file."""
  for lineno, line in lines(path):
    if not line.strip():
      continue
    yield lineno, json_object(line, path, lineno)


def json_object(line: str, path, lineno: int | None) -> dict:
  """One line parsed as a JSON object."""
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise DataError(path, lineno, f"invalid JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(obj, dict):
    raise DataError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
  return obj


def require_str(obj: dict, key: str, path, lineno: int | None, *, allow_empty=False) -> str:
  """obj[key] as a string (an integer id is turned into one); missing, another type, or empty
  unless `allow_empty`, is a DataError."""
  if key not in obj:
    raise DataError(path, lineno, f"missing field {key!r}")
  value = obj[key]
  if isinstance(value, int) and not isinstance(value, bool):
    value = str(value)
  if not isinstance(value, str):
    raise DataError(path, lineno, f"field {key!r} must be a string, got {type(value).__name__}")
  if not allow_empty and not value.strip():
    raise DataError(path, lineno, f"field {key!r} is empty")
  return value


def read_json(path: str | os.PathLike):
  """A JSON file; a damaged one (cut short, not JSON, not UTF-8) is a DataError naming it."""
  raw = files.read_bytes(path)
  try:
    return json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError as e:
    raise DataError(path, raw.count(b"\n", 0, e.start) + 1, "not UTF-8 text") from None
  except json.JSONDecodeError as e:
    raise DataError(path, e.lineno, f"invalid JSON ({e.msg} at column {e.colno})") from None
