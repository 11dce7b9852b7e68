"""No module reads or writes a workdir artifact except through `interdistill_jax/files.py`.

A workdir may be a bucket (`gs://...`), where `open`, `os.*`, `shutil.*` and `np.save`/`np.load`
on a path silently mean a local file of that name. This test follows, function by function
across the package, every value that is a workdir path: a `layout.*(...)` call (those of the
data cache aside), a variable named `workdir` / `wd`, anything joined onto one of those, the
parameters that some call passes one to, the functions that return one, and the `self.x`
attributes set to one. A direct file operation on such a value is an offender, except

- in `files.py` (the one place that does them, for local paths and buckets alike);
- in a branch that runs for local paths only: `if files.is_local(x):`, its `else` under
  `if not files.is_local(x):`, or after `if not files.is_local(x): ... return`;
- in `ALLOWED`, each named with the reason it must be local.

The analysis over-approximates (a call's result is a workdir path only when the function returns
one), so an offender it reports is worth a look even when it is not a real one; and it
under-approximates too (a path stored in a container, or in an object of another class, is lost):
`tests/files_test.py` checks the stages on a bucket stand-in, which finds what this misses.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import pathlib
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "interdistill_jax"

# (module, function) -> why its file operations on workdir paths are local by nature.
ALLOWED = {
    ("locking", "lock_workdir"): "the workdir lock is an fcntl lock, local by nature; a workdir in "
                                 "a bucket is locked through a local file (locking.lock_path)",
    ("teachers/cache", "Cache.__init__"): "SQLite needs a local file; teachers.cache.open_cache "
                                          "gives a workdir in a bucket a local mirror",
    ("events", "EventWriter.__init__"): "tensorboardX writes local files without extra packages; "
                                        "train.py makes a writer for a local stage directory only "
                                        "(events.writes_events)",
    ("sharing", "_copy_stage_dir"): "a sweep's root is local (sweep.run refuses another): its "
                                    "points share embeddings through symbolic links",
    ("sharing", "_copy_candidates"): "the same (relative symbolic links between a sweep's workdirs)",
    ("sharing", "_copy_labels"): "the same (a sweep's root is local)",
    ("sharing", "add_answers"): "the same, and SQLite needs local files",
}

# layout functions whose paths are outside the workdir, on local disk.
LOCAL_LAYOUT = {"corpus_indexes", "corpus_index", "digest_record", "local_mirror"}
# layout functions that return no path.
NOT_PATHS = {"is_done", "read_done", "check_teacher", "markdown_table"}
WORKDIR_NAMES = {"workdir", "wd"}
# What keeps a path a path.
PATH_FUNCS = {"os.path.join", "os.path.dirname", "os.path.abspath", "os.path.normpath",
              "os.path.realpath", "os.path.expanduser", "os.fspath", "str", "files.absolute"}
# Direct file operations.
SINKS = {"open", "os.open", "os.replace", "os.rename", "os.makedirs", "os.mkdir", "os.remove",
         "os.unlink", "os.rmdir", "os.listdir", "os.scandir", "os.stat", "os.symlink",
         "os.path.exists", "os.path.lexists", "os.path.isdir", "os.path.isfile",
         "os.path.getsize", "os.path.getmtime", "glob.glob", "np.save", "np.savez",
         "np.savez_compressed", "np.load", "tempfile.mkstemp", "tempfile.mkdtemp",
         "sqlite3.connect", "faiss.write_index", "faiss.read_index", "SummaryWriter"}
SINK_PREFIXES = ("shutil.",)
SINK_METHODS = {"savefig"}


@dataclasses.dataclass
class Function:
  module: str
  qualname: str
  node: ast.FunctionDef
  params: list[str]
  annotations: dict[str, str]
  tainted_params: set[str] = dataclasses.field(default_factory=set)
  returns_path: bool = False


_NAMES: dict[int, tuple[ast.AST, str]] = {}


def _name(node: ast.AST) -> str:
  """The source text of a call's function (`os.path.join`), cached: unparsing is slow."""
  hit = _NAMES.get(id(node))
  if hit is None or hit[0] is not node:
    hit = _NAMES[id(node)] = (node, ast.unparse(node))
  return hit[1]


def _is_local_test(node: ast.AST) -> bool:
  return isinstance(node, ast.Call) and _name(node.func) == "files.is_local"


def _negated_local_test(node: ast.AST) -> bool:
  return isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not) and _is_local_test(node.operand)


class Package:
  """Every function of the package's modules, keyed by (module, qualname)."""

  def __init__(self, sources: dict[str, str]):
    self.functions: dict[tuple[str, str], Function] = {}
    self.imports: dict[str, dict[str, str]] = {}  # module -> local name -> package module
    self.external: dict[str, set[str]] = {}  # module -> names it imports from elsewhere
    self.attrs: set[tuple[str, str, str]] = set()  # (module, class, attribute) holding workdir paths
    self.classes: dict[str, set[str]] = {}  # module -> its classes
    self.methods: dict[str, list[tuple[str, str]]] = {}  # method name -> (module, qualname)
    for module, text in sources.items():
      tree = ast.parse(text)
      self.imports[module] = self._imports(tree, set(sources))
      self.external[module] = {(a.asname or a.name).split(".")[0] for node in ast.walk(tree)
                               if isinstance(node, (ast.Import, ast.ImportFrom))
                               for a in node.names} - set(self.imports[module])
      self._collect(module, tree.body, "")

  @staticmethod
  def _imports(tree: ast.Module, modules: set[str]) -> dict[str, str]:
    out = {}
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("interdistill_jax"):
        base = node.module[len("interdistill_jax"):].lstrip(".").replace(".", "/")
        for alias in node.names:
          target = f"{base}/{alias.name}".lstrip("/")
          if target in modules:
            out[alias.asname or alias.name] = target
          elif base in modules:  # `from interdistill_jax.teachers.cache import Cache`
            out[alias.asname or alias.name] = f"{base}:{alias.name}"
    return out

  def _collect(self, module: str, body, prefix: str) -> None:
    for node in body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        qual = prefix + node.name
        args = node.args
        params = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
        annotations = {a.arg: _name(a.annotation) for a in (*args.posonlyargs, *args.args,
                                                           *args.kwonlyargs) if a.annotation}
        self.functions[(module, qual)] = Function(module, qual, node, params, annotations)
        if prefix and prefix[0].isupper():
          self.methods.setdefault(node.name, []).append((module, qual))
        self._collect(module, node.body, qual + ".")
      elif isinstance(node, ast.ClassDef):
        self.classes.setdefault(module, set()).add(node.name)
        self._collect(module, node.body, prefix + node.name + ".")

  def resolve(self, module: str, qualname: str, func: ast.AST) -> Function | None:
    """The package function a call's `func` names, when it can tell."""
    text = _name(func)
    cls = qualname.rsplit(".", 1)[0] if "." in qualname else ""
    candidates = []
    if isinstance(func, ast.Name):
      target = self.imports[module].get(text)
      if target and ":" in target:  # an imported class or function
        mod, name = target.split(":")
        candidates += [(mod, name), (mod, f"{name}.__init__")]
      candidates += [(module, text), (module, f"{text}.__init__")]
    elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
      owner = func.value.id
      if owner == "self" and cls:
        candidates.append((module, f"{cls.split('.')[0]}.{func.attr}"))
      elif owner in self.imports[module] and ":" not in self.imports[module][owner]:
        mod = self.imports[module][owner]
        candidates += [(mod, func.attr), (mod, f"{func.attr}.__init__")]
      elif owner not in self.imports[module] and owner not in self.external[module]:
        # `encoder.encode_corpus(...)`: the package's one method of that name
        methods = self.methods.get(func.attr, [])
        candidates += methods if len(methods) == 1 else []
    for key in candidates:
      if key in self.functions:
        return self.functions[key]
    return None


class Taint(ast.NodeVisitor):
  """One pass over one function: which names hold workdir paths, and what it does with them."""

  def __init__(self, package: Package, fn: Function):
    self.package, self.fn = package, fn
    self.names = set(WORKDIR_NAMES) | set(fn.tainted_params)
    self.offenders: list[tuple[int, str]] = []
    self.changed = False  # this function's names grew (its body is looked at again)
    self.spread = False  # a parameter, return or attribute elsewhere became a workdir path
    self.local = 0  # > 0 inside a branch that runs for local paths only

  # --- what holds a workdir path ------------------------------------------------------------

  def tainted(self, node: ast.AST | None) -> bool:
    if node is None:
      return False
    if isinstance(node, ast.Name):
      return node.id in self.names
    if isinstance(node, ast.Attribute):  # `self.directory`, or `store.directory` of `store: ShardStore`
      owner = self._class_of(node.value)
      return owner is not None and (*owner, node.attr) in self.package.attrs
    if isinstance(node, ast.Call):
      func = _name(node.func)
      if func.startswith("layout."):
        return func.split(".")[1] not in LOCAL_LAYOUT | NOT_PATHS
      if func in PATH_FUNCS:
        return any(self.tainted(a) for a in node.args)
      target = self.package.resolve(self.fn.module, self.fn.qualname, node.func)
      return bool(target and target.returns_path)
    if isinstance(node, ast.BinOp):
      return self.tainted(node.left) or self.tainted(node.right)
    if isinstance(node, ast.BoolOp):
      return any(self.tainted(v) for v in node.values)
    if isinstance(node, ast.JoinedStr):
      return any(self.tainted(v.value) for v in node.values if isinstance(v, ast.FormattedValue))
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
      return any(self.tainted(e) for e in node.elts)
    if isinstance(node, ast.Dict):
      return any(self.tainted(v) for v in node.values)
    if isinstance(node, ast.Subscript):
      return self.tainted(node.value)
    if isinstance(node, ast.IfExp):
      return self.tainted(node.body) or self.tainted(node.orelse)
    if isinstance(node, ast.Starred):
      return self.tainted(node.value)
    if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
      return self.tainted(node.elt) or any(self.tainted(g.iter) for g in node.generators)
    return False

  def _bind(self, target: ast.AST, tainted: bool) -> None:
    if not tainted:
      return
    if isinstance(target, ast.Name) and target.id not in self.names:
      self.names.add(target.id)
      self.changed = True
    elif isinstance(target, (ast.Tuple, ast.List)):
      for elt in target.elts:
        self._bind(elt, True)
    elif isinstance(target, ast.Attribute):
      owner = self._class_of(target.value)
      if owner is not None and (*owner, target.attr) not in self.package.attrs:
        self.package.attrs.add((*owner, target.attr))
        self.spread = True

  def _class_of(self, node: ast.AST) -> tuple[str, str] | None:
    """(module, class) of `self`, or of a parameter annotated with a class of the package."""
    if not isinstance(node, ast.Name):
      return None
    if node.id == "self" and "." in self.fn.qualname:
      return self.fn.module, self.fn.qualname.split(".")[0]
    annotation = self.fn.annotations.get(node.id, "").strip("'\"")
    target = self.package.imports[self.fn.module].get(annotation.split(".")[0])
    if annotation in self.package.classes.get(self.fn.module, ()):
      return self.fn.module, annotation
    if target and ":" in target:
      return tuple(target.split(":"))
    if target and "." in annotation:
      return target, annotation.split(".", 1)[1]
    return None

  def visit_Assign(self, node):
    for target in node.targets:
      self._bind(target, self.tainted(node.value))
    self.generic_visit(node)

  def visit_AnnAssign(self, node):
    self._bind(node.target, self.tainted(node.value))
    self.generic_visit(node)

  def visit_NamedExpr(self, node):
    self._bind(node.target, self.tainted(node.value))
    self.generic_visit(node)

  def visit_For(self, node):
    self._bind(node.target, self.tainted(node.iter))
    self.generic_visit(node)

  def visit_comprehension(self, node):
    self._bind(node.target, self.tainted(node.iter))
    self.generic_visit(node)

  def visit_withitem(self, node):
    if node.optional_vars is not None:
      self._bind(node.optional_vars, self.tainted(node.context_expr))
    self.generic_visit(node)

  def visit_Return(self, node):
    if self.tainted(node.value) and not self.fn.returns_path:
      self.fn.returns_path = True
      self.spread = True
    self.generic_visit(node)

  # --- branches for local paths only -------------------------------------------------------

  def _local_block(self, body) -> None:
    self.local += 1
    for stmt in body:
      self.visit(stmt)
    self.local -= 1

  def visit_If(self, node):
    self.visit(node.test)
    if _is_local_test(node.test):
      self._local_block(node.body)
      for stmt in node.orelse:
        self.visit(stmt)
    elif _negated_local_test(node.test):
      for stmt in node.body:
        self.visit(stmt)
      self._local_block(node.orelse)
    else:
      for stmt in (*node.body, *node.orelse):
        self.visit(stmt)

  def visit_body(self, body) -> None:
    """Statements after `if not files.is_local(x): ... return` run for local paths only."""
    for i, stmt in enumerate(body):
      if (isinstance(stmt, ast.If) and _negated_local_test(stmt.test) and stmt.body
          and isinstance(stmt.body[-1], ast.Return)):
        self.visit(stmt)
        self._local_block(body[i + 1:])
        return
      self.visit(stmt)

  def run(self) -> None:
    self.visit_body(self.fn.node.body)

  # --- calls ---------------------------------------------------------------------------------

  def visit_Call(self, node):
    func = _name(node.func)
    args = [*node.args, *(k.value for k in node.keywords)]
    is_sink = (func in SINKS or func.startswith(SINK_PREFIXES)
               or (isinstance(node.func, ast.Attribute) and node.func.attr in SINK_METHODS))
    if is_sink and not self.local and any(self.tainted(a) for a in args):
      self.offenders.append((node.lineno, func))
    target = self.package.resolve(self.fn.module, self.fn.qualname, node.func)
    if target is not None:
      params = target.params[1:] if target.params[:1] in (["self"], ["cls"]) else target.params
      for name, arg in zip(params, node.args):
        if self.tainted(arg) and name not in target.tainted_params:
          target.tainted_params.add(name)
          self.spread = True
      for kw in node.keywords:
        if kw.arg in target.params and self.tainted(kw.value) and kw.arg not in target.tainted_params:
          target.tainted_params.add(kw.arg)
          self.spread = True
    self.generic_visit(node)

  def visit_FunctionDef(self, node):
    pass  # analysed as a function of its own

  visit_AsyncFunctionDef = visit_FunctionDef


def offenders(sources: dict[str, str], allowed=None) -> list[str]:
  """`module:line: call in function` for each direct file operation on a workdir path."""
  allowed = ALLOWED if allowed is None else allowed
  package = Package(sources)
  for _ in range(50):  # to a fixed point: taint flows through calls, returns and attributes
    changed = False
    for fn in package.functions.values():
      taint = Taint(package, fn)
      taint.changed = True
      while taint.changed:  # within a function, until its names settle (loops, later uses)
        taint.changed = False
        taint.run()
      changed |= taint.spread
    if not changed:
      break
  out = []
  for fn in package.functions.values():
    if fn.module == "files" or (fn.module, fn.qualname) in allowed:
      continue
    taint = Taint(package, fn)
    taint.run()
    out += [(fn.module, line, f"{fn.module}:{line}: {call} in {fn.qualname}")
            for line, call in taint.offenders]
  return [text for _, _, text in sorted(out)]


@functools.cache
def _package_offenders() -> tuple[str, ...]:
  sources = {str(p.relative_to(PACKAGE).with_suffix("")): p.read_text(encoding="utf-8")
             for p in sorted(PACKAGE.rglob("*.py"))}
  return tuple(offenders(sources, allowed={}))


def _allowed(offender: str) -> bool:
  return any(offender.startswith(f"{module}:") and offender.endswith(f" in {fn}")
             for module, fn in ALLOWED)


def test_no_module_touches_workdir_files_but_through_files_py():
  found = [o for o in _package_offenders() if not _allowed(o)]
  assert not found, ("direct file operations on workdir paths (use interdistill_jax/files.py, or "
                     "add the function to ALLOWED with the reason it must be local):\n"
                     + "\n".join(found))


def test_every_allowed_function_still_needs_its_exception():
  found = _package_offenders()
  for module, fn in ALLOWED:
    assert any(o.startswith(f"{module}:") and o.endswith(f" in {fn}") for o in found), (
        f"ALLOWED names {module}.{fn}, which does no file operation on a workdir path (any "
        "more): drop it")


def _check(**modules: str) -> list[str]:
  return offenders({name: textwrap.dedent(text) for name, text in modules.items()}, allowed={})


def test_the_check_finds_direct_operations_on_workdir_paths():
  found = _check(stage=
      """
      import os
      from interdistill_jax import layout

      def write(workdir):
        path = layout.labels(workdir)
        with open(path, "w") as f:
          f.write("x")

      def move(config, workdir):
        out = os.path.join(layout.ranker_dir(workdir), "checkpoints")
        os.replace(out, out + ".old")
      """)
  assert found == ["stage:7: open in write", "stage:12: os.replace in move"]


def test_the_check_follows_paths_through_calls_returns_and_attributes():
  found = _check(helpers=
      """
      import shutil
      from interdistill_jax import layout

      def remove(directory):
        shutil.rmtree(directory)

      def marker(name, root):
        return layout.done(layout.eval_dir(root))

      class Run:
        def __init__(self, where):
          self.directory = where

        def _path(self, kind):
          return self.directory + "/" + kind

        def read(self):
          return open(self._path("error")).read()
      """, stage=
      """
      import numpy as np
      from interdistill_jax import helpers, layout

      def run(config, workdir):
        helpers.remove(layout.export_dir(workdir))
        np.save(helpers.marker("x", workdir), 0)
        helpers.Run(layout.peer_run(workdir, "t"))
      """)
  assert found == ["helpers:6: shutil.rmtree in remove", "helpers:19: open in Run.read",
                   "stage:7: np.save in run"]


def test_the_check_leaves_local_branches_and_local_paths_alone():
  found = _check(stage=
      """
      import os
      from interdistill_jax import files, layout

      def write(workdir, cache_dir):
        path = layout.labels(workdir)
        if files.is_local(path):
          os.replace(path + ".tmp", path)
        else:
          files.move(path + ".tmp", path)
        os.makedirs(layout.corpus_indexes(cache_dir))

      def stage(out_dir):
        if not files.is_local(out_dir):
          files.remove_tree(out_dir)
          return
        os.makedirs(out_dir)

      def run(workdir):
        stage(layout.export_dir(workdir))
      """)
  assert found == []
