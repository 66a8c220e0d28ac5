"""What a PowerShell script writes, read from its syntax tree (tree-sitter-powershell), not from its text.

The collector builds its file names the way PowerShell scripts do: ``Join-Path``
over a folder parameter and ``"$cmdlet.xml"`` inside ``foreach ($cmdlet in
$list)``, handed down through helper functions to ``Export-Clixml -Path``. A
text search would find a cmdlet name in a comment or a list that is never
exported; this follows the values instead:

- every writing command (`WRITERS`) is found, and its ``-Path``/``-LiteralPath``
  argument is evaluated;
- a variable is a ``foreach`` loop variable (every element of its list), or a
  variable assigned in the same function (every assigned value), or a parameter
  of the enclosing function (every value passed for it at every call site), or
  else stays a ``{name}`` placeholder;
- ``Join-Path`` joins, quoted strings expand, ``@(...)`` lists are their elements,
  and ``$item.FullName`` of ``$item = New-Item -Path X`` is X.

It understands exactly the subset of PowerShell that the collector uses; what it
cannot evaluate becomes a placeholder, which makes a test fail rather than pass.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import tree_sitter
import tree_sitter_powershell

WRITERS = {"export-clixml", "set-content", "out-file", "add-content", "export-csv"}
_WRAPPERS = {
    "pipeline", "pipeline_chain", "logical_expression", "bitwise_expression", "comparison_expression",
    "additive_expression", "multiplicative_expression", "format_expression", "range_expression",
    "array_literal_expression", "unary_expression", "statement_list", "left_assignment_expression",
}  # fmt: skip
_UNKNOWN = re.compile(r"\{\?[a-z_-]+\}")
"""An expression the evaluator does not understand: ``{?cast_expression}``."""
_LIMIT = 500  # values per expression: a runaway product means the script changed shape; fail loudly


def parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def walk(node: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def syntax_problems(tree: tree_sitter.Tree) -> list[str]:
    """ERROR and MISSING nodes, each as 'line:column: what'."""
    problems = []
    for node in walk(tree.root_node):
        if node.type == "ERROR" or node.is_missing:
            kind = f"missing {node.type}" if node.is_missing else "cannot parse"
            text = (node.text or b"").decode(errors="replace")[:60].replace("\n", "\\n")
            problems.append(f"{node.start_point[0] + 1}:{node.start_point[1] + 1}: {kind}: {text!r}")
    return problems


def _text(node: tree_sitter.Node) -> str:
    return (node.text or b"").decode()


def _core(node: tree_sitter.Node) -> tree_sitter.Node:
    """Through the grammar's one-child expression layers to the node that says something."""
    while node.type in _WRAPPERS and node.named_child_count == 1:
        node = node.named_children[0]
    return node


def _variable_name(node: tree_sitter.Node) -> str:
    return _text(node).lstrip("$@").removeprefix("script:").removeprefix("global:").lower()


@dataclass
class Script:
    tree: tree_sitter.Tree

    @classmethod
    def parse(cls, source: bytes) -> Script:
        return cls(parser().parse(source))

    # -- structure ---------------------------------------------------------------------------------------------
    def functions(self) -> dict[str, tree_sitter.Node]:
        found = {}
        for node in walk(self.tree.root_node):
            if node.type == "function_statement":
                name = next(c for c in node.children if c.type == "function_name")
                found[_text(name).lower()] = node
        return found

    def commands(self, name: str | None = None) -> list[tree_sitter.Node]:
        result = []
        for node in walk(self.tree.root_node):
            if node.type == "command":
                command_name = next((c for c in node.children if c.type == "command_name"), None)
                if command_name is not None and (name is None or _text(command_name).lower() == name):
                    result.append(node)
        return result

    @staticmethod
    def command_name(command: tree_sitter.Node) -> str:
        return _text(next(c for c in command.children if c.type == "command_name")).lower()

    @staticmethod
    def arguments(command: tree_sitter.Node) -> tuple[dict[str, tree_sitter.Node], list[tree_sitter.Node]]:
        """Named arguments (parameter name lowercased, no dash) and positional ones."""
        elements = next((c for c in command.children if c.type == "command_elements"), None)
        named: dict[str, tree_sitter.Node] = {}
        positional: list[tree_sitter.Node] = []
        pending: str | None = None
        for child in elements.named_children if elements is not None else []:
            if child.type == "command_argument_sep":
                continue
            if child.type == "command_parameter":
                if pending is not None:
                    named[pending] = child  # a switch
                pending = _text(child).lstrip("-").rstrip(":").lower()
                continue
            if pending is not None:
                named[pending] = child
                pending = None
            else:
                positional.append(child)
        return named, positional

    def _scope(self, node: tree_sitter.Node) -> tree_sitter.Node:
        parent = node.parent
        while parent is not None and parent.type != "function_statement":
            parent = parent.parent
        return parent or self.tree.root_node

    def _parameters(self, function: tree_sitter.Node) -> set[str]:
        names = set()
        for node in walk(function):
            if node.type == "script_parameter" and self._scope(node) == function:
                variable = next((c for c in node.children if c.type == "variable"), None)
                if variable is not None:
                    names.add(_variable_name(variable))
        return names

    def _assignments(self, scope: tree_sitter.Node, name: str) -> list[tree_sitter.Node]:
        values = []
        for node in walk(scope):
            if node.type != "assignment_expression" or self._scope(node) != scope:
                continue
            left = next(c for c in node.children if c.type == "left_assignment_expression")
            target = _core(left)
            if target.type == "variable" and _variable_name(target) == name:
                values.append(node.children[-1])
        return values

    # -- evaluation ---------------------------------------------------------------------------------------------
    def variable(self, name: str, at: tree_sitter.Node, depth: int) -> set[str]:
        node: tree_sitter.Node | None = at
        while node is not None:
            if node.type == "foreach_statement":
                loop = next(c for c in node.children if c.type == "variable")
                if _variable_name(loop) == name:
                    collection = next(c for c in node.children if c.type == "pipeline")
                    return self.values(collection, depth + 1)
            node = node.parent
        scope = self._scope(at)
        assigned = self._assignments(scope, name)
        if assigned:
            found = set().union(*(self.values(value, depth + 1) for value in assigned))
            # A value the script computes at run time ([string]$server.Name) is named by its variable.
            return {f"{{{name}}}" if _UNKNOWN.fullmatch(value) else value for value in found}
        if scope.type == "function_statement" and name in self._parameters(scope):
            function = _text(next(c for c in scope.children if c.type == "function_name")).lower()
            passed = [self.arguments(call)[0].get(name) for call in self.commands(function)]
            found = [self.values(argument, depth + 1) for argument in passed if argument is not None]
            if found:
                return set().union(*found)
        return {f"{{{name}}}"}

    def values(self, node: tree_sitter.Node, depth: int = 0) -> set[str]:
        """Every string this expression can be, as far as the script says."""
        if depth > 40:
            return {"{?too-deep}"}
        node = _core(node)
        kind = node.type
        if kind == "string_literal":
            return self._string(node, depth)
        if kind == "variable":
            return self.variable(_variable_name(node), node, depth)
        if kind in ("parenthesized_expression", "array_expression", "sub_expression"):
            inner = list(node.named_children)
            return set().union(*(self.values(c, depth + 1) for c in inner)) if inner else set()
        if kind == "statement_list" or (kind == "array_literal_expression" and node.named_child_count > 1):
            return set().union(*(self.values(c, depth + 1) for c in node.named_children if c.type != ","))
        if kind == "command" and self.command_name(node) == "join-path":
            named, positional = self.arguments(node)
            parent = named.get("path") or (positional[0] if positional else None)
            child = named.get("childpath") or (positional[1] if len(positional) > 1 else None)
            if parent is None or child is None:
                return {"{?join-path}"}
            joined = {f"{a}/{b}" for a in self.values(parent, depth + 1) for b in self.values(child, depth + 1)}
            return set(itertools.islice(joined, _LIMIT))
        if kind == "command" and self.command_name(node) == "new-item":
            named, _ = self.arguments(node)
            return self.values(named["path"], depth + 1) if "path" in named else {"{?new-item}"}
        if kind == "member_access":
            variable = next((c for c in node.children if c.type == "variable"), None)
            member = _text(node.children[-1]).lower()
            if variable is not None and member in ("fullname", "path"):
                return self.values(variable, depth + 1)
        return {f"{{?{kind}}}"}

    def _string(self, node: tree_sitter.Node, depth: int) -> set[str]:
        raw = _text(node)
        if raw.startswith("'"):
            return {raw[1:-1].replace("''", "'")}
        body = raw[1:-1]
        variables = [c for c in walk(node) if c.type == "variable"]
        pieces: list[set[str]] = []
        position = node.start_byte + 1
        for variable in variables:
            pieces.append(
                {(node.text or b"")[position - node.start_byte : variable.start_byte - node.start_byte].decode()}
            )
            pieces.append(self.variable(_variable_name(variable), variable, depth + 1))
            position = variable.end_byte
        pieces.append({(node.text or b"")[position - node.start_byte : len(node.text or b"") - 1].decode()})
        if not variables:
            return {body.replace("`", "")}
        return {"".join(combination) for combination in itertools.islice(itertools.product(*pieces), _LIMIT)}

    def string_constants(self) -> set[str]:
        """Every quoted string of the code (comments excluded), as written."""
        return {_text(node)[1:-1] for node in walk(self.tree.root_node) if node.type == "string_literal"}

    def written_paths(self) -> set[str]:
        """Every path a writing command of the script writes to."""
        paths: set[str] = set()
        for writer in WRITERS:
            for command in self.commands(writer):
                named, positional = self.arguments(command)
                target = named.get("literalpath") or named.get("path") or named.get("filepath")
                if target is None and positional:
                    target = positional[0]
                if target is not None:
                    paths |= self.values(target)
        return paths


def comment_help(source: str) -> str:
    """The script's comment-based help (the first <# ... #> block)."""
    found = re.search(r"<#(.*?)#>", source, re.S)
    return found.group(1) if found else ""
