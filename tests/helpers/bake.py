"""Expand docker-bake.hcl without Docker: variables, ${} templates, matrix targets, inherits, groups.

python-hcl2 parses but evaluates nothing (string literals keep their quotes, references come back
bare); the bake file keeps to literals, references and templates so this small evaluator is enough.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import hcl2

_TEMPLATE = re.compile(r"\$\{([^}]+)\}")


class Bake:
    def __init__(self, path: Path) -> None:
        with open(path) as handle:
            raw = hcl2.load(handle)
        self.variables = {}
        for block in raw.get("variable", []):
            for name, body in block.items():
                self.variables[_unquote(name)] = self.value(body.get("default"), {})
        self.raw_targets = {_unquote(n): b for block in raw.get("target", []) for n, b in block.items()}
        self.groups = {
            _unquote(n): [self.value(t, {}) for t in b.get("targets", [])]
            for block in raw.get("group", [])
            for n, b in block.items()
        }
        self.targets: dict[str, dict] = {}
        self.matrix_targets: dict[str, list[str]] = {}
        for name, body in self.raw_targets.items():
            self._expand(name, body)

    def lookup(self, ref: str, scope: dict) -> object:
        head, *rest = ref.strip().split(".")
        value = scope[head] if head in scope else self.variables[head]
        for part in rest:
            value = value[part]
        return value

    def value(self, raw: object, scope: dict) -> object:
        if isinstance(raw, list):
            return [self.value(v, scope) for v in raw]
        if isinstance(raw, dict):
            return {k: self.value(v, scope) for k, v in raw.items() if k != "__is_block__"}
        if not isinstance(raw, str):
            return raw
        if raw.startswith('"') and raw.endswith('"'):
            return _TEMPLATE.sub(lambda m: str(self.lookup(m.group(1), scope)), raw[1:-1])
        whole = re.fullmatch(r"\$\{([^}]+)\}", raw)
        return self.lookup(whole.group(1) if whole else raw, scope)

    def _expand(self, name: str, body: dict) -> None:
        body = {k: v for k, v in body.items() if k != "__is_block__"}
        matrix = body.pop("matrix", None)
        if matrix is None:
            self.targets[name] = self.value({k: v for k, v in body.items() if k != "name"}, {})
            return
        axes = {key: self.value(ref, {}) for key, ref in matrix.items()}
        names = []
        for combo in itertools.product(*axes.values()):
            scope = dict(zip(axes, combo, strict=True))
            target_name = self.value(body["name"], scope)
            self.targets[target_name] = self.value({k: v for k, v in body.items() if k != "name"}, scope)
            names.append(target_name)
        self.matrix_targets[name] = names

    def resolved(self, name: str) -> dict:
        """A target with its `inherits` chain merged in (maps merge key-wise, the child wins)."""
        target = self.targets[name]
        merged: dict = {}
        for parent in target.get("inherits", []):
            for key, value in self.resolved(parent).items():
                merged[key] = value
        for key, value in target.items():
            if key == "inherits":
                continue
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return merged

    def group_targets(self, group: str) -> list[str]:
        out = []
        for name in self.groups[group]:
            if name in self.groups:
                out += self.group_targets(name)
            elif name in self.matrix_targets:
                out += self.matrix_targets[name]
            else:
                out.append(name)
        return out


def _unquote(text: str) -> str:
    return text[1:-1] if text.startswith('"') and text.endswith('"') else text
