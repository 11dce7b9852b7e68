"""A sweep file, and the points of the grid it describes.

A sweep file is Python, like a config file, with one function:

  def get_sweep(arg=None):
    return {
        "seed": (0, 1),
        "label.max_queries": (100, 250, 500, 809),
        ("teacher.backend", "teacher.model"): (("openai", "gpt-4o-mini"),
                                               ("gemini", "gemini-2.5-flash")),
        "label.sample_seed": (0,),
    }

Each key is an axis: a config field, dotted as on the command line, and its values; or a tuple
of fields whose values go together (one tuple per point: teacher settings that only make sense
together). The points are the product of the axes, the first axis varying slowest. An axis with
one value sets its field for every point and stays out of the points' names.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any


class SweepError(ValueError):
  """A sweep file that cannot be read or does not fit the config: names the file and the axis."""


@dataclasses.dataclass(frozen=True)
class Point:
  """One point of the grid: its name (its workdir under the root) and the values it sets."""
  name: str
  values: dict  # field -> value, for every axis (single-valued ones too), in axis order


def load(spec: str) -> dict:
  """The axes of a sweep file: `path` or `path:arg` (`arg` goes to get_sweep)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise SweepError(f"{path}: sweep file not found")
  module_spec = importlib.util.spec_from_file_location(f"_sweep_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise SweepError(f"{path}: defines no get_sweep(arg=None)")
  axes = module.get_sweep(arg or None)
  if not isinstance(axes, Mapping) or not axes:
    raise SweepError(f"{path}: get_sweep() must return a non-empty dict of axes, got {axes!r}")
  return dict(axes)


def _axis(key, values, source: str) -> tuple[tuple[str, ...], list[tuple]]:
  """(fields, one tuple of values per point) of one axis, checked."""
  fields = (key,) if isinstance(key, str) else tuple(key)
  if not fields or not all(isinstance(f, str) and f for f in fields):
    raise SweepError(f"{source}: axis {key!r}: a field name or a tuple of field names")
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
    raise SweepError(f"{source}: axis {key!r}: give its values as a non-empty list or tuple")
  rows = []
  for value in values:
    row = (value,) if len(fields) == 1 else tuple(value) if isinstance(value, Sequence) else None
    if row is None or len(row) != len(fields):
      raise SweepError(f"{source}: axis {key!r}: each value must be a tuple of {len(fields)} "
                       f"values, got {value!r}")
    rows.append(row)
  if len(set(map(repr, rows))) != len(rows):
    raise SweepError(f"{source}: axis {key!r} repeats a value")
  return fields, rows


def _format(value: Any) -> str:
  """A value as it appears in a point's name (file-name safe)."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return "-".join(_format(v) for v in value) or "empty"
  return re.sub(r"[^A-Za-z0-9._-]+", "-", str(value)).strip("-") or "empty"


def short_names(fields: Sequence[str]) -> dict[str, str]:
  """Each field by its last component, or in full where two fields share it."""
  last = [f.rsplit(".", 1)[-1] for f in fields]
  return {f: s if last.count(s) == 1 else f for f, s in zip(fields, last)}


def points(axes: Mapping, *, source: str = "sweep") -> list[Point]:
  """The grid's points, first axis slowest; names join `field=value` of the axes with more than
  one value (`max_queries=100+seed=0`: "," would split a list flag)."""
  parsed = [_axis(key, values, source) for key, values in axes.items()]
  seen: set[str] = set()
  for fields, _ in parsed:
    for f in fields:
      if f in seen:
        raise SweepError(f"{source}: field {f!r} is on two axes")
      seen.add(f)
  varying = [f for fields, rows in parsed if len(rows) > 1 for f in fields]
  short = short_names(varying)
  out, names = [], {}
  for combo in itertools.product(*(rows for _, rows in parsed)):
    values = {f: v for (fields, _), row in zip(parsed, combo) for f, v in zip(fields, row)}
    name = "+".join(f"{short[f]}={_format(values[f])}" for f in varying) or "point"
    if name in names:
      raise SweepError(f"{source}: points {names[name]} and {values} would share the name {name!r}")
    names[name] = values
    out.append(Point(name, values))
  return out


def apply(config, values: Mapping[str, Any], *, source: str = "sweep"):
  """A copy of `config` with `values` set (dotted fields); a field the config does not declare,
  or a value of the wrong type, is a SweepError naming it."""
  config = config.copy_and_resolve_references()
  for field, value in values.items():
    *parents, leaf = field.split(".")
    node = config
    try:
      for part in parents:
        node = node[part]
      current = node[leaf]
    except (KeyError, AttributeError, TypeError):
      raise SweepError(f"{source}: {field!r} is not a config field") from None
    if hasattr(current, "items"):
      raise SweepError(f"{source}: {field!r} is a config section; sweep one of its fields")
    if isinstance(current, tuple) and isinstance(value, list):
      value = tuple(value)
    try:
      setattr(node, leaf, value)
    except (TypeError, ValueError, AttributeError) as e:
      raise SweepError(f"{source}: {field}={value!r}: {e}") from None
  return config
