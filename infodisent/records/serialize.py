"""The one serializer of the package's records: dataclasses to JSON values and back.

:func:`to_dict` turns a record (nested records, lists, tuples, dicts) into plain JSON values;
:func:`from_dict` rebuilds it from its type annotations, checking every field: an unknown key (a file
written by another version) or a value of the wrong type is an error naming where it sits, and a
missing key takes the field's default. :class:`Record` gives a dataclass both as methods.

Example:
    >>> from infodisent.records import Accuracy, from_dict, to_dict
    >>> from_dict(Accuracy, to_dict(Accuracy(top1=0.9, top5=1.0))) == Accuracy(top1=0.9, top5=1.0)
    True
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar, Union

from ..errors import InputError

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """A dataclass (nested ones, lists, tuples, dicts) as plain JSON values; ``to_dict`` methods are used.

    Args:
        obj: a record, a list, tuple or dict of them, or a plain value (returned as it is); dict keys
            become strings and tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        own = getattr(type(obj), "to_dict", None)
        if own is not None and own is not Record.to_dict:
            return own(obj)
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type[T], data: Any) -> T:
    """Rebuild ``cls`` (a dataclass, or a typing annotation) from :func:`to_dict`'s output.

    Unknown keys are an error (a file from another version), missing keys take the field's default.

    Args:
        cls: the type rebuilt: a dataclass, or an annotation such as ``list[Accuracy]`` or ``int | None``.
        data: plain JSON values, as :func:`to_dict` gives them.
    """
    return _convert(cls, data, cls.__name__ if isinstance(cls, type) else str(cls))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any or tp is None:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except (TypeError, ValueError, KeyError) as e:
                errors.append(str(e))
        raise InputError(errors[0] if len(errors) == 1 else f"{where}: a {type(value).__name__} that fits none of "
                         f"{[getattr(a, '__name__', str(a)) for a in args]} ({'; '.join(errors)[:300]})")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise InputError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if origin is tuple and args:
            return tuple(_convert(a, v, where) for a, v in zip(args, value))
        return [_convert(args[0] if args else Any, v, where) for v in value]
    if origin is dict:
        kt, vt = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        own = tp.__dict__.get("from_dict")
        if own is not None and isinstance(own, classmethod) and tp.from_dict.__func__ is not Record.from_dict.__func__:
            return tp.from_dict(value)
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}")
        hints = _type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(value) - names
        if unknown:
            raise InputError(f"{where}: unknown keys {sorted(unknown)} for {tp.__name__}")
        return tp(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise TypeError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
    return value


@functools.cache
def _type_hints(tp: type) -> dict[str, Any]:
    """A dataclass's resolved field types, once per class: resolving compiles every string annotation."""
    return typing.get_type_hints(tp)


class Record:
    """``to_dict`` / ``from_dict`` as methods of a record dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Rebuild this record from :func:`to_dict`'s output (:func:`from_dict`).

        Args:
            data: the record's fields as plain JSON values."""
        return from_dict(cls, data)


__all__ = ["Record", "from_dict", "to_dict"]
