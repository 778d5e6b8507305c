"""One configuration shape for every process: a file, then flags, then one check.

A process's settings are a frozen dataclass whose fields are declared with
`option`: the default, the help text and the rules live on the field, once.
`load` reads them in the same order for every process:

1. the JSON file (``--config``), whose keys are the field names (a nested
   dataclass is a nested object; relative paths are relative to the file);
2. command-line flags, which replace what the file says (relative paths are
   relative to the working directory). Each scalar field has a flag made from
   its path: ``cache.size`` is ``--cache-size``; a list is a repeatable flag;
3. one validation that lists every problem found, in the file and the flags
   together, as one `ConfigError`. A problem names the key, and the flag
   that sets it.

`reference` lists the options for the documentation, whose tables are
checked against it: what the docs say is what runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass
from typing import Any

from _trim.errors import ConfigError
from signatures.runtime.files import read_json


@dataclass(frozen=True)
class Option:
    """What the settings machinery knows of a field besides its type and default."""

    help: str = ""
    flag: str | None = None        # None: "--" + the field's path; "": no flag
    metavar: str | None = None
    # A file or directory, relative to the file that names it; an address
    # with a scheme (redis://, zk://) is left as it is.
    path: bool = False
    verbatim: tuple = ()           # values of a path option that are not paths ("*")
    choices: tuple = ()
    minimum: float | None = None   # numbers: the lowest value allowed
    positive: bool = False         # numbers: > 0
    replaces: tuple = ()           # fields this one clears when set on the command line
    from_flag: Callable | None = None  # str -> item, for a list of objects given as flags


def option(default: Any = MISSING, help: str = "", **rules) -> Any:
    """A settings field: ``deadline_ms: int = option(250, "...", positive=True)``."""
    meta = {"option": Option(help=help, **rules)}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable default: use a tuple")
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# -- types -------------------------------------------------------------------------------


def _opt(f: dataclasses.Field) -> Option:
    return f.metadata.get("option") or Option()


def _unwrap_optional(tp) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and len(args) == 2:
            return inner[0], True
    return tp, False


def _item(tp):
    """The item type of ``tuple[X, ...]``; None for any other type."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _is_settings(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _fields(cls) -> Iterator[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f, _unwrap_optional(hints[f.name])[0]


def flag_name(path: str, f: dataclasses.Field) -> str:
    return _opt(f).flag or "--" + path.replace(".", "-").replace("_", "-")


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


class _Problems(list):
    def add(self, at: str, message: str, flag: str | None = None) -> None:
        text = f"{at} {message}" if at else message
        self.append(f"{text} ({flag})" if flag else text)


# -- reading a file's object -------------------------------------------------------------


@dataclass
class _Reading:
    problems: _Problems
    base: str | None   # directory relative paths are taken from (None: leave them)


def _verbatim(value: str, opt: Option) -> bool:
    """A path option's value that is not a path: one of ``opt.verbatim``, or
    an address with a scheme."""
    return value in opt.verbatim or "://" in value


def _scalar(value, tp, at: str, flag, opt: Option, r: _Reading):
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(tp, lambda v: True)(value)
    if not ok:
        r.problems.add(at, f"must be {_TYPE_NAMES.get(tp, tp)}, got {value!r}", flag)
        return MISSING
    if tp is float:
        value = float(value)
    if (opt.path and r.base is not None and not _verbatim(value, opt)
            and not os.path.isabs(value)):
        value = os.path.normpath(os.path.join(r.base, value))
    return value


def _value(value, tp, at: str, flag, opt: Option, r: _Reading):
    inner, nullable = _unwrap_optional(tp)
    if value is None:
        if nullable:
            return None
        r.problems.add(at, "must not be null", flag)
        return MISSING
    item = _item(inner)
    if item is not None:
        if isinstance(value, str) and item is str:
            value = [value]   # one endpoint, one model: a list of one
        if not isinstance(value, (list, tuple)):
            r.problems.add(at, f"must be a list, got {value!r}", flag)
            return MISSING
        out = [_value(v, item, f"{at}[{i}]", None, opt, r) for i, v in enumerate(value)]
        return MISSING if any(v is MISSING for v in out) else tuple(out)
    if _is_settings(inner):
        return _object(inner, value, at, flag is not None, r)
    return _scalar(value, inner, at, flag, opt, r)


def _object(cls, data, at: str, flagged: bool, r: _Reading):
    """``cls`` from ``data``. A field that cannot be read is reported and takes
    its default, so that the rest are still checked; MISSING when a required
    one is absent or unreadable."""
    if not isinstance(data, dict):
        r.problems.add(at, f"must be an object, got {data!r}")
        return MISSING
    fields = list(_fields(cls))
    names = [f.name for f, _ in fields]
    unknown = sorted(set(data) - set(names))
    if unknown:
        r.problems.add(at, f"{'has unknown' if at else 'unknown'} keys {unknown} "
                           f"(known: {', '.join(names)})")
    kwargs, required_missing = {}, False
    hints = typing.get_type_hints(cls)
    for f, _ in fields:
        here = f"{at}.{f.name}" if at else f.name
        flag = flag_name(here, f) if flagged and _opt(f).flag != "" else None
        required = f.default is MISSING and f.default_factory is MISSING
        if f.name not in data:
            if required:
                r.problems.add(here, "is required", flag)
                required_missing = True
            continue
        value = _value(data[f.name], hints[f.name], here, flag, _opt(f), r)
        if value is not MISSING:
            kwargs[f.name] = value
        elif required:
            required_missing = True
    return MISSING if required_missing else cls(**kwargs)


def parse(cls, data, problems: list | None = None, base: str | None = None):
    """``cls`` from a JSON object; each problem goes to ``problems`` (and
    MISSING is returned when a required field could not be read). With
    ``problems`` None, a ConfigError lists them, and each field's own rules
    are checked too (the rules across fields are `validate`'s)."""
    collect = _Problems()
    settings = _object(cls, data, "", True, _Reading(collect, base))
    if problems is None:
        if settings is not MISSING:
            collect.extend(check(settings, across=False))
        if collect:
            raise fail(getattr(cls, "WHAT", "config"), collect)
        return settings
    problems.extend(collect)
    return settings


# -- rules -------------------------------------------------------------------------------


def check(settings, at: str = "", flagged: bool = True, across: bool = True) -> list[str]:
    """Every rule of ``settings`` that does not hold: each field's own
    (choices, ranges, recursively), then (``across``) the class's ``check()``
    for rules across fields."""
    problems = _Problems()
    for f, inner in _fields(type(settings)):
        here = f"{at}.{f.name}" if at else f.name
        value, opt = getattr(settings, f.name), _opt(f)
        flag = flag_name(here, f) if flagged and opt.flag != "" else None
        if _item(inner) is not None:
            for i, v in enumerate(value):
                problems.extend(_check_value(v, f"{here}[{i}]", None, opt, False, across))
        else:
            problems.extend(_check_value(value, here, flag, opt, flagged, across))
    own = getattr(settings, "check", None) if across else None
    if own is not None:
        for message in own():
            problems.add(at and f"{at}:", message)
    return problems


def _check_value(value, at: str, flag, opt: Option, flagged: bool, across: bool) -> list[str]:
    if dataclasses.is_dataclass(value):
        return check(value, at, flagged, across)
    problems = _Problems()
    if opt.choices and value is not None and value not in opt.choices:
        problems.add(at, f"must be one of {', '.join(map(str, opt.choices))}, got {value!r}", flag)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        what = "integer" if isinstance(value, int) else "number"
        if opt.positive and value <= 0:
            problems.add(at, f"must be a positive {what}, got {value!r}", flag)
        if opt.minimum is not None and value < opt.minimum:
            problems.add(at, f"must be at least {opt.minimum:g}, got {value!r}", flag)
    return problems


def fail(what: str, problems: list[str]) -> ConfigError:
    """The one error for a configuration: every problem, on one line (it goes to logs)."""
    return ConfigError(f"{what}: " + "; ".join(problems))


def validate(settings):
    """``settings`` itself, or ConfigError listing every rule it breaks."""
    problems = check(settings)
    if problems:
        raise fail(getattr(settings, "WHAT", "config"), problems)
    return settings


# -- the command line ------------------------------------------------------------------


def _flags(cls, prefix: str = ""):
    """(dotted path, Field, its type) of every field that has a flag."""
    for f, inner in _fields(cls):
        path = f"{prefix}{f.name}"
        opt = _opt(f)
        if opt.flag == "":
            continue
        if _is_settings(inner):
            yield from _flags(inner, f"{path}.")
        elif not (_is_settings(_item(inner)) and opt.from_flag is None):
            yield path, f, inner


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """``--config FILE`` and one flag per option of ``cls``, defaults shown."""
    parser.add_argument("--config", metavar="FILE",
                        help="settings file (JSON); the flags below override what it says")
    for path, f, tp in _flags(cls):
        opt = _opt(f)
        default = f.default if f.default not in (MISSING, None, ()) else None
        if isinstance(default, tuple):
            default = ", ".join(map(str, default))
        help_ = opt.help + (f" (default: {default})" if default is not None else "")
        kw: dict = {"dest": path, "default": None, "help": help_ or None}
        if tp is not bool:
            kw["metavar"] = opt.metavar or path.rpartition(".")[2].upper()
        if _item(tp) is not None:
            kw["action"] = "append"
            if opt.from_flag is not None:
                kw["type"] = _flag_type(opt.from_flag, flag_name(path, f))
        elif tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = tp
            if opt.choices:
                kw["choices"] = opt.choices
        parser.add_argument(flag_name(path, f), **kw)


def _flag_type(convert: Callable, flag: str) -> Callable:
    def parse_flag(text: str):
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: {exc}") from None
    parse_flag.__name__ = flag
    return parse_flag


def _set(data: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        node = data.get(key)
        if not isinstance(node, dict):
            node = data[key] = {}
        data = node
    data[last] = value


def _from_command_line(value, opt: Option):
    if opt.from_flag is not None:
        return [dataclasses.asdict(v) for v in value]
    if opt.path:
        absolute = (lambda v: v if _verbatim(v, opt) else os.path.abspath(v))
        return [absolute(v) for v in value] if isinstance(value, list) else absolute(value)
    return value


def load(cls, args: argparse.Namespace | None = None, *, path: str | None = None,
         data: dict | None = None):
    """``cls`` from ``--config`` (or ``path`` / ``data``), then the flags in
    ``args``; one ConfigError listing every problem of both."""
    what = getattr(cls, "WHAT", "config")
    path = path or (getattr(args, "config", None) if args is not None else None)
    base = None
    if path is not None:
        try:
            data = read_json(path, what)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        base = os.path.dirname(os.path.abspath(path))
        what = f"{what} {path}"
    data = dict(data or {})
    if args is not None:
        for dotted, f, _ in _flags(cls):
            value = vars(args).get(dotted)
            if value is not None:
                _set(data, dotted, _from_command_line(value, _opt(f)))
                for other in _opt(f).replaces:
                    _set(data, other, None)
    problems = _Problems()
    settings = parse(cls, data, problems, base)
    if settings is not MISSING:
        # Rules across fields only on what was read as written: a field that
        # fell back to its default would make them report nonsense.
        problems.extend(check(settings, across=not problems))
    if problems:
        raise fail(what, problems)
    return settings


def reference(cls) -> list[tuple[str, str, str]]:
    """(key, default as JSON, help) of every option of ``cls``, for the docs."""
    rows = []

    def walk(klass, prefix: str) -> None:
        for f, inner in _fields(klass):
            if _is_settings(inner):
                walk(inner, f"{prefix}{f.name}.")
                continue
            if f.default is MISSING and f.default_factory is MISSING:
                default = "required"
            else:
                default = json.dumps(f.default if f.default is not MISSING else [])
            rows.append((f"{prefix}{f.name}", default, _opt(f).help))

    walk(cls, "")
    return rows


def markdown(cls, with_flags: bool = True) -> str:
    """`reference` as the Markdown table docs/operations.md carries (without
    flags for objects that are items of a list, like the root's leaves)."""
    lines = ["| key | default | flag | meaning |", "|---|---|---|---|"]
    flags = {path: flag_name(path, f) for path, f, _ in _flags(cls)} if with_flags else {}
    for key, default, help_ in reference(cls):
        flag = f"`{flags[key]}`" if key in flags else ""
        lines.append(f"| `{key}` | `{default}` | {flag} | {help_.replace('|', '/')} |")
    return "\n".join(lines)


__all__ = ["Option", "add_arguments", "check", "fail", "flag_name", "load", "markdown",
           "option", "parse", "reference", "validate"]
