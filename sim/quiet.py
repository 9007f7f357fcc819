"""Silencing py-libp2p's logging for a simulation run, down to the cost of building the messages.

A silenced logger still costs its callers: ``logger.debug(f"... {self.peer_id}:{stream_id} ...")`` formats
its f-string (peer IDs in base58, reprs of frames) before the call finds the level disabled. The library
does this about 600 times per node per virtual second, most of it on the per-message path (Yamux reads and
writes, the pubsub read loop). `without_log_calls` removes those calls from the library's functions for the
duration of a run: each module's source is parsed, every statement that is only a call to one of its
loggers' ``debug``/``info``/``warning`` is dropped (a block left empty gets ``pass``), the module is
compiled again from its own file name and line numbers, and each function whose code changed gets the new
code object (``__code__``), the original put back on exit.

Nothing else changes: a dropped statement only built a message for a logger that discards it (the run sets
libp2p's loggers to ``CRITICAL``), so a run's metrics are the same with and without it, event for event.
A function whose source cannot be read, or whose new code does not fit it (other free variables), keeps its
own code.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import sys
import types
from collections.abc import Iterator
from typing import Any

#: Logger methods whose calls are dropped. All are below the ``CRITICAL`` level a quiet run sets.
DROPPED_LEVELS = frozenset({"debug", "info", "warning"})


class _DropLogCalls(ast.NodeTransformer):
    def __init__(self, logger_names: set[str]) -> None:
        self.logger_names = logger_names
        self.dropped = 0

    def _is_log_call(self, node: ast.stmt) -> bool:
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
            return False
        func = node.value.func
        if not (isinstance(func, ast.Attribute) and func.attr in DROPPED_LEVELS):
            return False
        owner = func.value
        return isinstance(owner, ast.Name) and owner.id in self.logger_names

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for field, value in ast.iter_fields(node):
            if not (isinstance(value, list) and value and isinstance(value[0], ast.stmt)):
                continue
            kept = [stmt for stmt in value if not self._is_log_call(stmt)]
            self.dropped += len(value) - len(kept)
            if not kept:
                kept = [ast.copy_location(ast.Pass(), value[0])]
            setattr(node, field, kept)
        return super().generic_visit(node)


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _functions(module: types.ModuleType) -> Iterator[types.FunctionType]:
    """The module's own functions: top-level ones and those in its classes (methods, static and class
    methods, property accessors). Nested functions follow their parent's code."""
    name = module.__name__
    for value in list(vars(module).values()):
        if isinstance(value, types.FunctionType) and value.__module__ == name:
            yield value
        elif isinstance(value, type) and value.__module__ == name:
            for attr in list(vars(value).values()):
                candidates: list[Any] = [attr]
                if isinstance(attr, (staticmethod, classmethod)):
                    candidates = [attr.__func__]
                elif isinstance(attr, property):
                    candidates = [attr.fget, attr.fset, attr.fdel]
                for fn in candidates:
                    while isinstance(fn, types.FunctionType) and fn.__module__ == name:
                        yield fn
                        fn = getattr(fn, "__wrapped__", None)


def _rewrite(module: types.ModuleType) -> list[tuple[types.FunctionType, types.CodeType]]:
    """Give the module's functions code without their log calls; returns (function, original code)."""
    path = getattr(module, "__file__", None)
    loggers = {n for n, v in vars(module).items() if isinstance(v, logging.Logger)}
    if not path or not path.endswith(".py") or not loggers:
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    dropper = _DropLogCalls(loggers)
    tree = dropper.visit(tree)
    if not dropper.dropped:
        return []
    try:
        compiled = compile(tree, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return []
    by_place = {(c.co_qualname, c.co_firstlineno): c for c in _code_objects(compiled)}
    swapped = []
    for fn in _functions(module):
        old = fn.__code__
        new = by_place.get((old.co_qualname, old.co_firstlineno))
        if new is None or new == old or new.co_freevars != old.co_freevars:
            continue
        fn.__code__ = new
        swapped.append((fn, old))
    return swapped


@contextlib.contextmanager
def without_log_calls(prefix: str = "libp2p") -> Iterator[int]:
    """Drop the logging statements of every loaded module under ``prefix`` until exit; yields how many
    functions changed. Call it only where those loggers are disabled (it is how a quiet run uses it)."""
    swapped: list[tuple[types.FunctionType, types.CodeType]] = []
    try:
        for name, module in sorted(sys.modules.items()):
            if module is not None and (name == prefix or name.startswith(prefix + ".")):
                swapped.extend(_rewrite(module))
        yield len(swapped)
    finally:
        for fn, old in reversed(swapped):
            fn.__code__ = old


__all__ = ["DROPPED_LEVELS", "without_log_calls"]
