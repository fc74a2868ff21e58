"""Figures in ``reports/*.json`` are measured, never written down (issue 10 §3).

A reliability report is only worth what measured it. Every report is written by
``tests.conftest.write_report(id, figures, passed)``; this check reads every test module's syntax
tree and fails when a call passes a literal ``True``/``False`` or number

* as ``passed``, or
* as a figure: a value of the figures dict (nested dicts and lists included), whether the dict is
  written in the call or built in a variable (``figures = {...}``, ``figures["k"] = ...``,
  ``figures.update(...)``), or a conditional whose branches are both literals (``0 if ok else 1``
  is a verdict dressed as a count: count the thing).

A name counts as a literal when every binding of it in the calling function (or, for a name the
function does not bind, in the module) assigns a literal: ``leaks = 0`` never updated, or a module
constant. A configuration value is reported from what was configured (``settings.X``, ``len(...)``
of what the test did), so nothing is allow-listed. Strings are descriptions, not figures, and
``None`` states nothing; both pass. Nothing but ``write_report`` may write into the reports folder.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
WRITER = "write_report"


def _is_literal(node: ast.AST) -> bool:
    """A bool or number written in the source (``-1`` included)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, bool | int | float | complex)


class _Scope:
    """Bindings and uses of names in one function (or the module), to resolve a figure that is a name."""

    def __init__(self, node: ast.AST, parent: _Scope | None) -> None:
        self.node, self.parent = node, parent
        self.bindings: dict[str, list[ast.AST | None]] = {}  # None: bound by something not an assignment
        for child in _own_nodes(node):
            if isinstance(child, ast.Assign):
                for target in child.targets:
                    self._bind(target, child.value)
            elif isinstance(child, ast.AnnAssign) and child.value is not None:
                self._bind(child.target, child.value)
            elif isinstance(child, ast.AugAssign | ast.For | ast.AsyncFor | ast.comprehension | ast.NamedExpr):
                self._bind(child.target, None)
            elif isinstance(child, ast.withitem) and child.optional_vars is not None:
                self._bind(child.optional_vars, None)
            elif isinstance(child, ast.arg):
                self.bindings.setdefault(child.arg, []).append(None)
            elif isinstance(child, ast.Import | ast.ImportFrom):
                for alias in child.names:
                    self.bindings.setdefault((alias.asname or alias.name).split(".")[0], []).append(None)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.ExceptHandler) and (
                child is not node and child.name
            ):
                self.bindings.setdefault(child.name, []).append(None)
        # A nested function that declares a name nonlocal (or global) and rebinds it changes it here.
        for inner in ast.walk(node):
            if inner is not node and isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef):
                shared = {n for d in ast.walk(inner) if isinstance(d, ast.Nonlocal | ast.Global) for n in d.names}
                for d in ast.walk(inner):
                    if isinstance(d, ast.Name) and isinstance(d.ctx, ast.Store) and d.id in shared:
                        self.bindings.setdefault(d.id, []).append(None)
        # Reads of each name outside report calls and asserts: a constant that configures the test
        # (``range(N)``, a request count) is read; a stated outcome (``leaks = 0``) is only reported.
        self.uses: dict[str, int] = {}
        for read in _reads(node):
            self.uses[read] = self.uses.get(read, 0) + 1

    def _bind(self, target: ast.AST, value: ast.AST | None) -> None:
        if isinstance(target, ast.Name):
            self.bindings.setdefault(target.id, []).append(value)
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:  # unpacking: the element's value is not a literal in the source
                self._bind(element.value if isinstance(element, ast.Starred) else element, None)

    def lookup(self, name: str) -> tuple[_Scope, list[ast.AST | None]] | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.bindings:
                return scope, scope.bindings[name]
            scope = scope.parent
        return None


def _reads(node: ast.AST) -> Iterator[str]:
    """Names read under ``node``, skipping report calls and assert statements."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Assert) or (isinstance(child, ast.Call) and _called(child) == WRITER):
            continue
        if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load):
            yield child.id
        yield from _reads(child)


def _called(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _own_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Nodes of ``node``'s own scope: not the bodies of functions or classes nested in it."""
    for child in ast.iter_child_nodes(node):
        yield child
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            yield from _own_nodes(child)


def _constant(node: ast.AST, scope: _Scope, seen: frozenset[str] = frozenset()) -> bool:
    """``node`` states a constant: a literal, literals on both sides of a conditional, or a name
    bound only ever to one literal and read nowhere but in reports and asserts."""
    if _is_literal(node):
        return True
    if isinstance(node, ast.IfExp):
        return _constant(node.body, scope, seen) and _constant(node.orelse, scope, seen)
    if isinstance(node, ast.Name) and node.id not in seen:
        found = scope.lookup(node.id)
        if found is None:
            return False
        where, values = found
        if not values or any(v is None for v in values) or where.uses.get(node.id, 0):
            return False
        one_value = len({ast.dump(v) for v in values if v is not None}) == 1
        return one_value and all(v is not None and _constant(v, where, seen | {node.id}) for v in values)
    return False


def _figure_values(
    node: ast.AST, scope: _Scope, path: str, seen: frozenset[str] = frozenset()
) -> Iterator[tuple[str, ast.AST]]:
    """(path, value) of every leaf figure under ``node`` (dicts and lists are walked)."""
    if isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values, strict=True):
            label = f"{path}[{ast.unparse(key)}]" if key is not None else f"{path}[**]"
            yield from _figure_values(value, scope, label, seen)
    elif isinstance(node, ast.List | ast.Tuple | ast.Set):
        for i, element in enumerate(node.elts):
            yield from _figure_values(element, scope, f"{path}[{i}]", seen)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        for arg in node.args:
            yield from _figure_values(arg, scope, path, seen)
        for kw in node.keywords:
            yield from _figure_values(kw.value, scope, f"{path}[{kw.arg!r}]" if kw.arg else f"{path}[**]", seen)
    elif isinstance(node, ast.Name) and node.id not in seen:
        yield from _built_in_scope(node.id, scope, path, seen | {node.id})
        found = scope.lookup(node.id)
        values = found[1] if found else []
        containers = [v for v in values if isinstance(v, ast.Dict | ast.List | ast.Tuple | ast.Set | ast.Call)]
        for value in containers:
            yield from _figure_values(value, scope, path, seen | {node.id})
        if not containers:
            yield path, node
    else:
        yield path, node


def _built_in_scope(name: str, scope: _Scope, path: str, seen: frozenset[str]) -> Iterator[tuple[str, ast.AST]]:
    """Figures added to the dict ``name`` after it was made: ``name[k] = v``, ``name.update(...)``,
    ``name |= {...}``, ``name.setdefault(k, v)``."""
    for child in _own_nodes(scope.node):
        if isinstance(child, ast.Assign):
            for target in child.targets:
                if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) and target.value.id == name:
                    yield from _figure_values(child.value, scope, f"{path}[{ast.unparse(target.slice)}]", seen)
        elif (
            isinstance(child, ast.AugAssign)
            and isinstance(child.op, ast.BitOr)
            and isinstance(child.target, ast.Name)
            and child.target.id == name
        ):
            yield from _figure_values(child.value, scope, path, seen)
        elif (
            isinstance(child, ast.Call)
            and isinstance(child.func, ast.Attribute)
            and isinstance(child.func.value, ast.Name)
            and child.func.value.id == name
        ):
            if child.func.attr == "update":
                for arg in child.args:
                    yield from _figure_values(arg, scope, path, seen)
                for kw in child.keywords:
                    yield from _figure_values(kw.value, scope, f"{path}[{kw.arg!r}]", seen)
            elif child.func.attr == "setdefault" and len(child.args) == 2:
                yield from _figure_values(child.args[1], scope, f"{path}[{ast.unparse(child.args[0])}]", seen)


def _calls(tree: ast.Module) -> Iterator[tuple[ast.Call, _Scope]]:
    """Every ``write_report(...)`` call with the scope it is made in."""

    def walk(node: ast.AST, scope: _Scope) -> Iterator[tuple[ast.Call, _Scope]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, _Scope(child, scope))
                continue
            if isinstance(child, ast.Call) and _called(child) == WRITER:
                yield child, scope
            yield from walk(child, scope)

    yield from walk(tree, _Scope(tree, None))


def _argument(call: ast.Call, position: int, keyword: str) -> ast.AST | None:
    if len(call.args) > position and not any(isinstance(a, ast.Starred) for a in call.args[: position + 1]):
        return call.args[position]
    return next((kw.value for kw in call.keywords if kw.arg == keyword), None)


def _problems(source: str, filename: str) -> tuple[int, list[str]]:
    """(write_report calls, problems) of one module."""
    tree = ast.parse(source, filename)
    problems: list[str] = []
    calls = 0
    for call, scope in _calls(tree):
        calls += 1
        where = f"{filename}:{call.lineno}"
        figures, passed = _argument(call, 1, "figures"), _argument(call, 2, "passed")
        if figures is None or passed is None:
            problems.append(f"{where}: write_report needs figures and passed as plain arguments to be checked")
            continue
        if _constant(passed, scope):
            problems.append(f"{where}: passed is the constant {ast.unparse(passed)!r}; compute it from the figures")
        for path, value in _figure_values(figures, scope, "figures"):
            if _constant(value, scope):
                problems.append(f"{where}: {path} is the constant {ast.unparse(value)!r}; measure it")
    return calls, problems


def _test_modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_report_states_a_constant() -> None:
    calls, problems = 0, []
    for path in _test_modules():
        if path == TESTS / "conftest.py" or path == Path(__file__).resolve():
            continue
        n, found = _problems(path.read_text(), str(path.relative_to(TESTS.parent)))
        calls += n
        problems += found
    assert calls > 20, f"only {calls} write_report calls found: is the check still looking at the right name?"
    assert not problems, "\n".join(problems)


def test_only_write_report_writes_reports() -> None:
    """Nothing else touches the reports folder, so every report goes through the check above."""
    offenders = [
        str(p.relative_to(TESTS.parent))
        for p in _test_modules()
        if p not in (TESTS / "conftest.py", Path(__file__).resolve()) and "REPORTS_DIR" in p.read_text()
    ]
    assert not offenders, offenders


CAUGHT = """
LEAKS = 0

def test_a(x):
    write_report("A", {"leaks": 0, "pass": True}, True)

def test_b(x):
    figures = {"n": len(x), "nested": {"ok": False}, "items": [1, x]}
    figures["late"] = -3
    figures.update(more=2.5)
    leaks = 0
    write_report("B", figures, leaks == 0 and x)
    write_report("C", {"leaks": leaks, "module": LEAKS, "verdict": 0 if x else 1}, ok)

def test_c(x):
    ok = True
    write_report("D", {"n": len(x)}, ok)
"""

MEASURED = """
REQUESTS = 20

def test_r(x):
    sent = [x.send() for _ in range(REQUESTS)]
    refused = False
    try:
        x.key()
    except KeyError:
        refused = True
    checks = 0

    def gate():
        nonlocal checks
        checks += 1

    write_report("R", {"requests": REQUESTS, "sent": len(sent), "refused": refused, "checks": checks}, refused)

def test_a(x):
    leaks = 0
    for item in x:
        leaks += item.leaked
    ok = leaks == 0
    figures = {"leaks": leaks, "n": len(x), "name": "a description", "none": None}
    figures["ratio"] = leaks / len(x)
    write_report("A", figures, ok)
    write_report("B", {"seconds": round(x.elapsed, 3), "count": sum(1 for _ in x)}, not leaks)
"""


def test_the_check_catches_constants_and_passes_measurements() -> None:
    """The check itself: every constant in ``CAUGHT`` is found, nothing in ``MEASURED`` is."""
    calls, problems = _problems(CAUGHT, "caught.py")
    assert calls == 4
    flagged = "\n".join(problems)
    for expected in (
        "caught.py:5: passed is the constant 'True'",
        "caught.py:5: figures['leaks'] is the constant '0'",
        "caught.py:5: figures['pass'] is the constant 'True'",
        "figures['nested']['ok'] is the constant 'False'",
        "figures['items'][0] is the constant '1'",
        "figures['late'] is the constant '-3'",
        "figures['more'] is the constant '2.5'",
        "caught.py:13: figures['leaks'] is the constant 'leaks'",
        "caught.py:13: figures['module'] is the constant 'LEAKS'",
        "caught.py:13: figures['verdict'] is the constant '0 if x else 1'",
        "caught.py:17: passed is the constant 'ok'",
    ):
        assert expected in flagged, (expected, flagged)
    assert len(problems) == 11, flagged
    assert _problems(MEASURED, "measured.py") == (3, [])
