"""The package's modules import one another without cycles, lazy (function-level) imports included.

Every `import` / `from ... import` statement counts, wherever it stands (module level, functions,
methods, `if TYPE_CHECKING:`). `from pkg import name` is an edge to `pkg.name` when that is a module
of the package, else to `pkg` (its `__init__`); `import a.b` is an edge to `a.b`. The parent
packages Python runs on the way (`a` for `a.b`) are not edges: a package's `__init__` importing its
own submodules is how packages are built, not a cycle. Dynamic `importlib.import_module` calls (the
task table in `tasks.py`) are not import statements and are not followed.
"""

import ast
import pathlib

PACKAGE = "interdistill_jax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE


def _modules(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every .py file under the package directory `root`."""
  out = {}
  for path in sorted(root.rglob("*.py")):
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _targets(node: ast.AST, module: str, is_package: bool, modules) -> list[str]:
  """The package modules one import statement of `module` loads."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name in modules]
  if node.level:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    source = ".".join(base + ([node.module] if node.module else []))
  else:
    source = node.module
  out = []
  for alias in node.names:
    sub = f"{source}.{alias.name}"
    if sub in modules:
      out.append(sub)
    elif source in modules:
      out.append(source)
  return out


def import_graph(root: pathlib.Path, package: str) -> dict[str, set[str]]:
  """Module -> the package modules it imports anywhere in its body."""
  modules = _modules(root, package)
  graph = {}
  for module, path in modules.items():
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    graph[module] = {target for node in ast.walk(tree)
                     if isinstance(node, (ast.Import, ast.ImportFrom))
                     for target in _targets(node, module, is_package, modules)}
  return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle (path from a module back to itself) per strongly connected set of modules."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def connect(v):  # Tarjan's algorithm
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1 or v in graph.get(v, ()):
        components.append(component)

  for v in sorted(graph):
    if v not in index:
      connect(v)
  cycles = []
  for component in components:
    start = min(component)
    # Breadth first from `start` inside the component, until an edge leads back to it.
    parent, frontier, last = {start: None}, [start], None
    while last is None:
      nxt = []
      for v in frontier:
        if start in graph[v]:
          last = v
          break
        for w in sorted(graph[v] & component):
          if w not in parent:
            parent[w] = v
            nxt.append(w)
      frontier = nxt
    path = [start]
    while last is not None:  # last, its parent, ... back to start
      path.insert(0, last)
      last = parent[last]
    cycles.append(path)
  return sorted(cycles)


def _short(name: str) -> str:
  return name.removeprefix(PACKAGE + ".") if name != PACKAGE else name


def format_cycle(cycle: list[str]) -> str:
  return " -> ".join(_short(m) for m in cycle)


def test_the_package_has_no_import_cycles():
  graph = import_graph(ROOT, PACKAGE)
  assert f"{PACKAGE}.teachers" in graph and f"{PACKAGE}.teachers.base" in graph
  assert f"{PACKAGE}.shards" in graph[f"{PACKAGE}.retrieval"]  # function-level imports are seen
  cycles = find_cycles(graph)
  assert not cycles, "import cycles:\n" + "\n".join(format_cycle(c) for c in cycles)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
  pkg = tmp_path / "fake"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "a.py").write_text("from fake import b\n")
  (pkg / "b.py").write_text("def f():\n  from . import c\n  return c\n")
  (pkg / "c.py").write_text("import os\n\nclass C:\n  def m(self):\n    import fake.a\n")
  (pkg / "d.py").write_text("from fake.sub import thing\nfrom .sub import leaf\n")
  (pkg / "sub" / "__init__.py").write_text("from ..d import x\n")
  (pkg / "sub" / "leaf.py").write_text("from .. import a\n")
  graph = import_graph(pkg, "fake")
  assert graph == {"fake": set(), "fake.a": {"fake.b"}, "fake.b": {"fake.c"}, "fake.c": {"fake.a"},
                   "fake.d": {"fake.sub", "fake.sub.leaf"}, "fake.sub": {"fake.d"},
                   "fake.sub.leaf": {"fake.a"}}
  assert [" -> ".join(c) for c in find_cycles(graph)] == [
      "fake.a -> fake.b -> fake.c -> fake.a", "fake.d -> fake.sub -> fake.d"]


def test_an_acyclic_graph_and_a_self_import():
  assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
  assert find_cycles({"a": {"a"}}) == [["a", "a"]]

