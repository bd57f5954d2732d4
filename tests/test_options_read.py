"""Every option of every subcommand is read by the code its command runs.

A static walk: from each subcommand's ``run`` function (``set_defaults(run=...)``), follow the
calls that pass the parsed namespace on to other functions of :mod:`subtomo.commands` and
collect what they read of it (``args.X``, ``getattr(args, "X")``; ``getattr(args, key)`` with a
computed ``key`` counts the strings of that function and of the module constants it names).
An option that no path reads is parsed and ignored: the test names it. Whether each option
also means something on every route of a command is checked by that command's tests (for
``extract``: ``tests/tomo/test_from_tomograms.py``).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import textwrap

import pytest

from subtomo.cli import build_parser


def _leaves(parser: argparse.ArgumentParser, name: str = "subtomo"):
    """(command words, parser) of every parser that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if parser.get_default("run") is not None:
        yield name, parser
    for action in subs:
        for word, child in action.choices.items():
            yield from _leaves(child, f"{name} {word}")


def _options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest → first option string, of the options a user can give."""
    out = {}
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                               argparse._SubParsersAction)) or action.dest == argparse.SUPPRESS:
            continue
        out.setdefault(action.dest, (action.option_strings or [action.dest])[0])
    return out


def _node(function):
    """The AST of ``function`` (a def or a lambda) in its module, and the module."""
    module = sys.modules[function.__module__]
    tree = ast.parse(textwrap.dedent(inspect.getsource(module)))
    line, name = function.__code__.co_firstlineno, function.__name__
    for node in ast.walk(tree):
        if name == "<lambda>" and isinstance(node, ast.Lambda) and node.lineno == line:
            return node, module
        if isinstance(node, ast.FunctionDef) and node.name == name and node.lineno <= line:
            if node.lineno == line or any(d.lineno == line for d in node.decorator_list):
                return node, module
    raise AssertionError(f"no source for {function}")


def _strings(value) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, (tuple, list, set, frozenset, dict)):
        return {s for v in value for s in _strings(v)}
    return set()


def _reads(function, names: set[str], seen: set) -> set[str]:
    """Attributes of the namespace (bound to ``names`` in ``function``) that ``function`` and
    the command functions it passes the namespace to read."""
    key = (function, frozenset(names))
    if key in seen:
        return set()
    seen.add(key)
    node, module = _node(function)
    reads: set[str] = set()
    dynamic = False

    def is_args(n) -> bool:
        return isinstance(n, ast.Name) and n.id in names

    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and is_args(sub.value):
            reads.add(sub.attr)
        if not isinstance(sub, ast.Call):
            continue
        if (isinstance(sub.func, ast.Name) and sub.func.id in ("getattr", "hasattr")
                and sub.args and is_args(sub.args[0])):
            if isinstance(sub.args[1], ast.Constant):
                reads.add(sub.args[1].value)
            else:
                dynamic = True
            continue
        callee = getattr(module, sub.func.id, None) if isinstance(sub.func, ast.Name) else None
        if not (inspect.isfunction(callee) and callee.__module__.startswith("subtomo.commands")):
            continue
        params = list(inspect.signature(callee).parameters)
        passed = {params[i] for i, a in enumerate(sub.args) if is_args(a) and i < len(params)}
        passed |= {k.arg for k in sub.keywords if is_args(k.value)}
        if passed:
            reads |= _reads(callee, passed, seen)
    if dynamic:  # getattr(args, key): the strings this function names, directly or by constant
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant):
                reads |= _strings(sub.value)
            elif isinstance(sub, ast.Name) and not callable(getattr(module, sub.id, None)):
                reads |= _strings(getattr(module, sub.id, None))
    return reads


def _unread(parser: argparse.ArgumentParser) -> set[str]:
    run = parser.get_default("run")
    first = next(iter(inspect.signature(run).parameters))
    return set(_options(parser)) - _reads(run, {first}, set())


COMMANDS = list(_leaves(build_parser()))


@pytest.mark.parametrize("command,parser", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_every_option_is_read(command, parser):
    options = _options(parser)
    unread = sorted(options[d] for d in _unread(parser))
    assert not unread, f"{command}: parsed and never read: {', '.join(unread)}"


def test_options_accepted_without_effect_are_few_and_named():
    """RELION options that state what is always so here (``add_accepted``) are the only ones
    parsed and stored nowhere."""
    accepted = {command: [a.option_strings[0] for a in parser._actions
                          if type(a).__name__ == "_Accepted"] for command, parser in COMMANDS}
    assert {c: a for c, a in accepted.items() if a} == {"subtomo reconstruct": ["--3d_rot"]}


def test_the_walk_finds_an_option_nobody_reads():
    """The check can fail: an option added to a parser and never read is found."""
    parser = dict(COMMANDS)["subtomo extract"]
    action = parser.add_argument("--nobody_reads_this", type=int, default=None)
    try:
        assert _unread(parser) >= {"nobody_reads_this"}
    finally:
        parser._remove_action(action)
        parser._option_string_actions.pop("--nobody_reads_this")
    assert len(COMMANDS) > 20
