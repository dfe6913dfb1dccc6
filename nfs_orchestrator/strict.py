"""Strict loading of frozen dataclasses from plain mappings (YAML/JSON), and dotted overrides.

What this is: the one place that turns untrusted dicts into typed, frozen specs. Unknown keys, wrong
types and missing required keys fail with the key's dotted path and, where one is close, a
suggestion. What it is not: a validator of meaning; each dataclass checks its own values in
``__post_init__`` (raising ``SpecError``), and this module adds the path to the message.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.files import read_checked

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping; a missing file, bad YAML or a non-mapping is a one-line SpecError."""
    p = Path(path)

    def failure(e: Exception) -> str:
        if not isinstance(e, yaml.YAMLError):
            return f"cannot read: {e}"
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        return f"{where}invalid YAML: {problem}"

    data = read_checked(
        p, lambda f: yaml.safe_load(f.read_text()), error=SpecError, failure=failure
    )
    if not isinstance(data, dict):
        raise SpecError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a choice is close to ``word``, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def from_mapping(cls: type[T], data: Any, path: str = "") -> T:
    """Builds the frozen dataclass ``cls`` from ``data``, strictly.

    A mapping that gives only some keys of a nested spec merges into that field's default:
    ``search: {arch_optimizer: {lr: 0.01}}`` keeps ``SearchSpec``'s default arch weight decay
    (not ``OptimSpec``'s), so ``--set search.arch_optimizer.lr=0.01`` changes the lr only.

    Args:
        cls: a dataclass type whose fields carry type hints.
        data: a mapping (usually from YAML or JSON).
        path: dotted path of ``data`` inside the file, for messages.
    """
    return _convert(cls, data, path)


def _convert(tp: Any, value: Any, path: str, base: Any = None) -> Any:
    """``base``: for a dataclass ``tp``, the instance a partial mapping is merged into (the
    field's default); keys the mapping leaves out keep ``base``'s values, not ``tp``'s defaults."""
    where = path or "<top>"
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise SpecError(f"{where}: expected a mapping, got {_tname(value)}")
        hints = get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = [k for k in value if k not in fields]
        if unknown:
            k = unknown[0]
            raise SpecError(f"{_join(path, str(k))}: unknown key{suggest(str(k), fields)}")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                inner = getattr(base, name) if isinstance(base, tp) else _default_of(f)
                kwargs[name] = _convert(hints[name], value[name], _join(path, name), inner)
            elif isinstance(base, tp):
                kwargs[name] = getattr(base, name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"{_join(path, name)}: required key is missing")
        try:
            return tp(**kwargs)
        except SpecError as e:
            msg = str(e)
            raise SpecError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path, base)
            except SpecError as e:
                errors.append(str(e))
        raise SpecError(errors[0] if len(errors) == 1 else f"{where}: unexpected value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            hint = suggest(str(value), [str(c) for c in choices])
            raise SpecError(f"{where}: {value!r} is not one of {list(choices)}{hint}")
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{where}: expected a list, got {_tname(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise SpecError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise SpecError(f"{where}: expected a mapping, got {_tname(value)}")
        args = get_args(tp) or (str, Any)
        return {
            _convert(args[0], k, where): _convert(args[1], v, _join(path, str(k)))
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"strict loader does not handle type {tp!r} at {where}")


class Spec:
    """What every frozen spec shares: ``to_dict`` (plain JSON-able values) and ``from_dict``
    (strict loading, with the key path in every message)."""

    # fields added after campaign ids were first published: left out of fingerprints at their
    # default (``identity``), so those ids stay
    LATE_FIELDS: typing.ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def identity(self) -> dict[str, Any]:
        """The plain dict fingerprints cover: ``to_dict`` without the ``LATE_FIELDS`` that are
        at their default, in this spec and every spec it holds."""
        body = to_plain(self)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self.LATE_FIELDS and body[f.name] == to_plain(f.default):
                body.pop(f.name)
            elif isinstance(value, Spec):
                body[f.name] = value.identity()
        return body

    @classmethod
    def from_dict(cls: type[T], data: Any, path: str = "") -> T:
        return from_mapping(cls, data, path)


def load_spec(
    cls: type[T], path: str | Path, overrides: typing.Iterable[str] = (), *, named: bool = True
) -> T:
    """The spec ``cls`` in the YAML file ``path``, with dotted ``overrides``; ``named`` specs
    take the file's stem as their ``name`` unless it sets one. Errors name the file."""
    p = Path(path)
    data = apply_overrides(read_yaml(p), overrides)
    if named:
        data.setdefault("name", p.stem)
    try:
        return from_mapping(cls, data)
    except SpecError as e:
        raise SpecError(f"{p}: {e}") from None


def replace_path(spec: T, dotted: str, value: Any, path: str = "") -> T:
    """``spec`` with the field at ``dotted`` (``search.arch_optimizer.lr``) set to ``value``:
    the value is converted by the field's type hint, as loading would, and every spec on the way
    is rebuilt by ``dataclasses.replace``, so each validates again. Unknown fields are an error
    naming the path."""
    head, _, rest = dotted.partition(".")
    where = _join(path, head)
    if not dataclasses.is_dataclass(spec):
        raise SpecError(f"{path}: not a mapping, {head!r} cannot be set inside it")
    fields = {f.name for f in dataclasses.fields(spec) if f.init}
    if head not in fields:
        raise SpecError(f"{where}: unknown key{suggest(head, fields)}")
    current = getattr(spec, head)
    if rest:
        new = replace_path(current, rest, value, where)
    else:
        new = _convert(get_type_hints(type(spec))[head], value, where)
    try:
        return dataclasses.replace(spec, **{head: new})
    except SpecError as e:
        raise SpecError(f"{path or '<top>'}: {e}") from None


def _default_of(f: dataclasses.Field) -> Any:
    """A field's default when it is a dataclass instance (the base a partial mapping such as
    ``{lr: 0.01}`` for ``search.arch_optimizer`` merges into), else None."""
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        return None
    return default if dataclasses.is_dataclass(default) else None


def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and mappings → plain JSON-able dicts and lists (field order kept)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces: the byte string every fingerprint is computed over."""
    return json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def fingerprint(obj: Any) -> str:
    """sha256 hex digest of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Applies dotted ``key=value`` overrides (values parsed as YAML) to a copy of ``data``.

    ``budget.num_trials=4`` sets ``data["budget"]["num_trials"] = 4``. A key must already exist
    in the file or be a field the spec knows; the spec loader reports unknown ones with their path.
    """
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. budget.num_trials=4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise SpecError(f"--set {key}: cannot parse value {raw!r}") from None
        parts = key.strip().split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise SpecError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _tname(value: Any) -> str:
    return type(value).__name__
