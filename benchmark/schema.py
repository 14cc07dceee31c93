"""One config path: every component's settings are a dataclass built from a plain dict by `build`.

Why one builder: YAML presets, user YAML files and `--set key=value` overrides all arrive as
dicts of loosely typed values. Turning them into config objects in seven places let typos pass
(`Blotch(typo=1)`), let `steps=abc` reach the training loop as a traceback and let
`pairs_per_defect=0` run a column trained on nothing. Here a field declares its type (the
annotation) and its range (`option(..., ge=1)`); `build` coerces what is unambiguous ("12" -> 12,
1e3 -> 1000), rejects the rest with one line naming the dotted key, the value and what was
expected, and rejects unknown keys listing the known ones. The built dataclass is the *resolved*
config: it is what gets hashed and stored, so a changed default or preset file changes the hash.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config file, field or value; the message is one line naming it."""


def option(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, choices: tuple | None = None,
           help: str = "", omit_default: bool = False) -> Any:
    """A dataclass field with a declared range or set of choices (checked by `build`).

    Mutable defaults (lists, dicts) are copied per instance. ``omit_default``: the field is left
    out of ``resolved`` while it holds its default. For a field added after records existed
    (e.g. the diffusion baselines' ``scale``): the records, run folders and generated sets made
    before it keep their hashes, since the default is what they ran with."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "help": help, "omit_default": omit_default}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if get_origin(tp) in (list, tuple):
        return "a list"
    if get_origin(tp) is dict or tp is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` as type `tp` (an annotation), or a ConfigError naming `where`."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, get_args(tp)))}, got {value!r}")
        return value
    if value is None:
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got None")
    if tp is Any or tp is object:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.strip())
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):  # "a,b,c" from the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
            return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        args = get_args(tp)
        if args:
            return {k: coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, where)
    return value


def check_range(value: Any, meta: typing.Mapping, where: str) -> None:
    """The `option(...)` bounds of one field; each element of a list is checked alike."""
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_range(v, meta, f"{where}[{i}]")
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for key, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                          ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{where}: must be {word} {bound}, got {value!r}")


def known_fields(cls: type) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls) if f.init)


def build(cls: type[T], data: typing.Mapping | None, where: str) -> T:
    """The dataclass `cls` from `data` (None: all defaults), every value coerced and range-checked.

    Unknown keys, wrong types and out-of-range values raise one ConfigError naming
    ``<where>.<key>``. A dataclass may add cross-field checks in ``__post_init__`` (raise
    ConfigError there too)."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = dataclasses.asdict(data)
    if not isinstance(data, typing.Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of {cls.__name__} fields, got {data!r}")
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(names))
    if unknown:
        raise ConfigError(f"{where + ': ' if where else ''}unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        f = names[key]
        path = f"{where}.{key}" if where else str(key)
        v = coerce(value, hints.get(key, Any), path)
        check_range(v, f.metadata, path)
        kwargs[key] = v
    for name, f in names.items():  # defaults must satisfy the ranges too (a bad default is a bug)
        if name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{where + ': ' if where else ''}missing required key {name!r}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if not where or msg.startswith(where) else f"{where}: {msg}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where + ': ' if where else ''}{e}") from None


def reject_settings(cfg: typing.Mapping | None, where: str) -> None:
    """For components that take no settings: any key is an unknown key."""
    if cfg:
        raise ConfigError(f"{where}: unknown key{'s' if len(cfg) > 1 else ''} "
                          f"{', '.join(map(repr, sorted(cfg)))}; this component takes no settings")
    return None


def resolved(obj: Any) -> dict:
    """A built config as a plain, JSON-able dict (tuples as lists): what is hashed and stored.
    Fields declared ``omit_default`` are left out while at their default (see ``option``)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)
                    if not (f.metadata.get("omit_default") and getattr(v, f.name) == _default_of(f))}
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    if obj is None:
        return {}
    return plain(obj)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


__all__ = ["ConfigError", "build", "check_range", "coerce", "known_fields", "option", "reject_settings", "resolved"]
