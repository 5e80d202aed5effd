"""Numbers in the configuration and the preprocessing spec must be finite numbers (YAML's yes/no/on/off and .nan are not),
and text must be text (YAML reads an unquoted hash of digits as an integer)."""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationInfo, field_validator

_NUMBERS = frozenset({int, float})
_TEXT = frozenset({str, SecretStr})


def _leaves(annotation: Any) -> set[Any]:
    """The plain types an annotation can hold (through Optional, Annotated, list, tuple and dict values)."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return {annotation}
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _leaves(args[0])
    if origin is dict:
        args = args[1:]
    if origin is typing.Literal:
        return {type(a) for a in args}
    if origin in (typing.Union, types.UnionType, list, tuple, set, frozenset, dict):
        return set().union(*(_leaves(a) for a in args if a is not Ellipsis))
    return {annotation}


def _first(value: Any, odd: typing.Callable[[Any], bool]) -> tuple[str, Any] | None:
    """(where, the item) for the first odd item in a value, a list or a mapping; None when there is none."""
    if odd(value):
        return "", value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else ()
    for key, v in items:
        if odd(v):
            return f" for {key}" if isinstance(value, dict) else f" at position {key}", v
    return None


def _non_finite(v: Any) -> bool:
    if isinstance(v, str):
        # An INSPECTOR_* variable arrives as text: "nan" must read as the file's .nan does.
        try:
            v = float(v)
        except ValueError:
            return False
    return isinstance(v, float) and not math.isfinite(v)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _text_only(annotation: Any) -> bool:
    """True when the field holds text and no number (a Literal's choices are left to pydantic's own message)."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return annotation in _TEXT
    if origin is typing.Annotated:
        return _text_only(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return any(_text_only(a) for a in args) and not _leaves(annotation) & _NUMBERS
    return False


class StrictNumbers(BaseModel):
    """Base for user-written models (config, preprocessing spec, training recipe): numbers are finite numbers, text is text."""

    @field_validator("*", mode="before")
    @classmethod
    def _strict_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return v
        leaves = _leaves(field.annotation)
        if leaves & _NUMBERS and bool not in leaves:
            # pydantic's lax mode reads true as 1, and YAML 1.1 reads yes/on as true: `threshold: yes` would be 1.0.
            found = _first(v, lambda x: isinstance(x, bool))
            if found is not None:
                where, flag = found
                raise ValueError(f"expected a number{where}, got {str(flag).lower()} (YAML reads yes/no/on/off as true/false)")
            # A NaN compares false with every bound, so pydantic would blame the wrong bound.
            found = _first(v, _non_finite)
            if found is not None:
                where, x = found
                raise ValueError(f"expected a finite number{where}, got {float(x)}")
        if _text_only(field.annotation) and _number(v):
            # YAML reads `sha256: 0123...` or `line: 7` as a number, and drops leading zeros on the way.
            shown = "a number" if SecretStr in _leaves(field.annotation) else f"the number {v}"
            raise ValueError(f"expected text, got {shown}; put it in quotes in YAML")
        return v
