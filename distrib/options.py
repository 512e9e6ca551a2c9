"""Declaring, checking and documenting config keys: the machinery behind distrib.config.

A key is a dataclass field made with `option(...)`: its type (`Literal[...]` for choices, `list[...]`,
`X | None`), its range (ge/gt/le/lt), its help text and whether it may change when a run resumes. Sections
derive from `Section`, whose construction checks every field generically; `build_section` turns a YAML tree
into sections; `help_text` and `markdown_table` render the same declarations for --help and docs/config.md.
Nothing here imports torch.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import ClassVar, Literal

import yaml

from distrib.errors import UserError

INT_MAX = 2**31 - 1  # the implicit upper bound of every integer key (sizes, counts, steps)


def option(default, help: str, *, ge=None, gt=None, le=None, lt=None, nonempty: bool = False,
           changeable: bool = False):
    """A config key. ge/gt/le/lt bound a number (each item of a list); nonempty refuses ""; changeable: the
    key may differ when a run resumes (run-time knobs), otherwise it identifies the run and a change is refused."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "nonempty": nonempty, "changeable": changeable}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls, help: str):
    return field(default_factory=cls, metadata={"help": help, "section": True})


class Section:
    """Base of every config section: checks each field against its declared type and range on construction."""

    KEY: ClassVar[str] = ""

    def __post_init__(self):
        for f, hint in _fields(type(self)):
            _check_value(hint, getattr(self, f.name), _join(self.KEY, f.name), f.metadata)


def build_section(cls, tree, prefix: str = ""):
    """The section cls from a YAML tree: unknown keys refused, values converted from YAML's spelling."""
    if not isinstance(tree, dict):
        where = key_text(prefix.rstrip(".")) or "config"
        raise UserError(f"{where}: expected a section (mapping), got {show(tree)}")
    fields = _fields(cls)
    names = {f.name for f, _ in fields}
    for key in tree:
        if key not in names:
            raise UserError(f"unknown config key {key_text(f'{prefix}{key}')}")
    kwargs = {}
    for f, hint in fields:
        if f.name in tree:
            value = tree[f.name]
            kwargs[f.name] = (build_section(hint, value, f"{prefix}{f.name}.") if _is_section(hint)
                              else _convert(hint, value))
    return cls(**kwargs)


def _convert(hint, value):
    """YAML's spelling to the declared type where it is unambiguous; anything else is left for the check."""
    hint = _strip_optional(hint)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        items = value if isinstance(value, list) else [value]  # one number is a one-element list
        return [_convert(item, v) for v in items]
    if hint is float and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value) if abs(value) < 2**1023 else math.inf if value > 0 else -math.inf  # refused as inf
        if isinstance(value, str):
            try:  # YAML reads 1e-3 (no dot) as a string
                return float(value)
            except ValueError:
                return value
    if (hint is str or typing.get_origin(hint) is Literal) and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        return str(value)
    return value


# ---- generic checks ----------------------------------------------------------------------------------------
def _check_value(hint, value, key: str, meta) -> None:
    if _is_section(hint):
        if not isinstance(value, hint):
            raise UserError(f"{key}: expected a section (mapping), got {show(value)}")
        return
    if value is None and type(None) in typing.get_args(hint):
        return
    words = _keywords(hint)
    if isinstance(value, str) and value in words:
        return
    hint = _strip_optional(hint)
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {show(value)}")
        (item,) = typing.get_args(hint)
        for i, v in enumerate(value):
            _check_value(item, v, f"{key}[{i}]", meta)
        return
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if not isinstance(value, str) or value not in choices:
            raise UserError(f"{key}: unknown value {show(value)} (choose from {', '.join(choices)})")
        return
    if not _is_instance(hint, value):
        expected = " or ".join([hint.__name__, *words])
        raise UserError(f"{key}: expected {expected}, got {show(value)}")
    if hint is str:
        if meta.get("nonempty") and not value.strip():
            raise UserError(f"{key}: must not be empty")
        return
    if hint is float and not math.isfinite(value):
        raise UserError(f"{key}: must be a finite number, got {value}")
    _check_range(value, key, meta, INT_MAX if hint is int else None)


def _is_instance(hint, value) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_range(value, key: str, meta, implicit_max) -> None:
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    le = implicit_max if le is None and lt is None else le
    ok = ((ge is None or value >= ge) and (gt is None or value > gt)
          and (le is None or value <= le) and (lt is None or value < lt))
    if not ok:
        raise UserError(f"{key}: must be {_range_text(ge, gt, le, lt)}, got {value}")


def _range_text(ge, gt, le, lt) -> str:
    low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
    high = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f">= {ge}" if ge is not None else f"> {gt}"
    if high:
        return f"<= {le}" if le is not None else f"< {lt}"
    return "any"


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


# ---- introspection, shared by the checks, --help and the config table --------------------------------------
_HINTS: dict = {}


def _fields(cls) -> list[tuple[dataclasses.Field, object]]:
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = [(f, hints[f.name]) for f in dataclasses.fields(cls)]
    return _HINTS[cls]


def _is_section(hint) -> bool:
    return isinstance(hint, type) and issubclass(hint, Section)


def _strip_optional(hint):
    """The value type of `X | None` or `X | Literal["auto"]`: X."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(o for o in typing.get_args(hint) if o is not type(None) and typing.get_origin(o) is not Literal)
    return hint


def _keywords(hint) -> tuple[str, ...]:
    """The words a number key also takes, from the Literal in its union (`int | Literal["auto"]`)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((typing.get_args(o) for o in typing.get_args(hint) if typing.get_origin(o) is Literal), ())
    return ()


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def iter_keys(cls, prefix: str = ""):
    """(dotted key, type, field) for every leaf key under the section class cls, in declaration order."""
    for f, hint in _fields(cls):
        key = _join(prefix, f.name)
        if _is_section(hint):
            yield from iter_keys(hint, key)
        else:
            yield key, hint, f


def show(value) -> str:
    """A value as YAML spells it, on one line (long ones shortened), for messages and documents."""
    if isinstance(value, str):
        text = repr(value)
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
        text = text if text.isprintable() else repr(value)  # a key with a line break: still one line
    return text if len(text) <= 60 else text[:57] + "..."


def key_text(text: str) -> str:
    """A key as the user typed it, on one line."""
    text = str(text)
    return text if text.isprintable() else repr(text)


def describe_values(hint, meta) -> str:
    """The allowed values of a key: its choices, or its type and range."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = [*_keywords(hint), *(["null"] if type(None) in typing.get_args(hint) else [])]
        return describe_values(_strip_optional(hint), meta) + "".join(f" or {word}" for word in others)
    if typing.get_origin(hint) is list:
        return "list of " + describe_values(typing.get_args(hint)[0], meta)
    if typing.get_origin(hint) is Literal:
        return " \\| ".join(typing.get_args(hint))
    if hint is str:
        return "non-empty str" if meta.get("nonempty") else "str"
    bounds = _range_text(*(meta.get(k) for k in ("ge", "gt", "le", "lt")))
    return hint.__name__ if bounds == "any" else f"{hint.__name__} {bounds.removeprefix('in ')}"


# ---- documents: --help and the config table ----------------------------------------------------------------
def _default_text(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if isinstance(value, str):
        return value or '""'
    return show(value)


def help_text(cls) -> str:
    """Every key by section: default, allowed values, meaning; * marks keys that may change on resume."""
    lines = []
    for f, hint in _fields(cls):
        lines.append(f"{f.name}: {f.metadata.get('help', '')}")
        for key, key_type, leaf in iter_keys(hint, f.name):
            mark = "*" if leaf.metadata.get("changeable") else " "
            values = describe_values(key_type, leaf.metadata).replace("\\|", "|")
            lines.append(f" {mark}{key}={_default_text(leaf)}  ({values})  {leaf.metadata.get('help', '')}")
    return "\n".join(lines)


def markdown_table(cls) -> str:
    """docs/config.md's table, one row per key; "may change" marks keys a resumed run may change."""
    rows = ["| key | default | values | meaning | on resume |", "|---|---|---|---|---|"]
    for key, hint, f in iter_keys(cls):
        resume = "may change" if f.metadata.get("changeable") else ""
        meaning = f.metadata.get("help", "").replace("|", "\\|")  # a bare | would end the cell
        rows.append(f"| `{key}` | `{_default_text(f)}` | {describe_values(hint, f.metadata)} | {meaning} | {resume} |")
    return "\n".join(rows) + "\n"
