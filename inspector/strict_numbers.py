"""Numbers in the configuration and the preprocessing spec must be numbers: YAML's yes/no/on/off are not."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationInfo, field_validator

_NUMBERS = frozenset({int, float})


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


def _first_bool(value: Any) -> tuple[str, bool] | None:
    """(where, the boolean) for the first boolean in a value, a list or a mapping; None when there is none."""
    if isinstance(value, bool):
        return "", value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else ()
    for key, v in items:
        if isinstance(v, bool):
            return f" for {key}" if isinstance(value, dict) else f" at position {key}", v
    return None


class NumbersNotBools(BaseModel):
    """Base for user-written models (config, preprocessing spec, training recipe): booleans are refused where numbers belong."""

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_not_bools(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1, and YAML 1.1 reads yes/on as true: `threshold: yes` would be 1.0.
        field = cls.model_fields.get(info.field_name or "")
        found = _first_bool(v)
        if field is None or found is None:
            return v
        leaves = _leaves(field.annotation)
        if bool in leaves or not leaves & _NUMBERS:
            return v
        where, flag = found
        raise ValueError(f"expected a number{where}, got {str(flag).lower()} (YAML reads yes/no/on/off as true/false)")
