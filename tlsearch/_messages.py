"""Pydantic's validation errors as lines a user can act on: the dotted path of the field, the value
given, what was expected, and a "did you mean" for unknown keys."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["unknown_keys", "format_errors"]


def unknown_keys(model: type[BaseModel], raw: Any, path: str) -> list[str]:
    """Unknown keys anywhere in ``raw``, with a "did you mean" from the model's own fields."""
    if not isinstance(raw, dict):
        return []
    problems = []
    fields = {n: f for n, f in model.model_fields.items() if not f.exclude}
    for key, value in raw.items():
        where = f"{path}{key}"
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            tip = f"; did you mean `{path}{hint[0]}`?" if hint else ""
            allowed = ", ".join(sorted(fields))
            problems.append(f"`{where}`: unknown key (expected one of: {allowed}){tip}")
            continue
        sub = _section_type(fields[key].annotation)
        if sub is not None:
            if isinstance(value, dict):
                problems += unknown_keys(sub, value, where + ".")
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    problems += unknown_keys(sub, item, f"{where}[{i}].")
    return problems


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if (isinstance(annotation, type) and issubclass(annotation, BaseModel)
            and getattr(annotation, "is_section", False)):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"Range", "str", "int", "float", "bool", "list[union[bool,int,float,str]]",
                      "BackboneEntry", "union[bool,int,float,str]"} or "[" in str(part) or (
            str(part).startswith(("list", "literal", "function-after", "dict"))
        ):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def format_errors(err: ValidationError) -> list[str]:
    by_field: dict[str, list[str]] = {}
    errors = [e for e in err.errors(include_url=False) if e["type"] != "extra_forbidden"]
    # a union tried on a mapping: where one form's own check failed (`low <= high` ...), the
    # other forms' "Input should be a valid list/number/..." only repeat that it is a mapping
    checked = {_format_loc(tuple(e["loc"])) for e in errors if e["type"] == "value_error"}
    for e in errors:
        where = _format_loc(tuple(e["loc"])) or "(top level)"
        if where in checked and e["type"] != "value_error" and e["type"].endswith(
                ("_type", "_parsing")) and isinstance(e.get("input"), dict):
            continue
        msg = e["msg"].removeprefix("Value error, ")
        given = e.get("input")
        if e["type"] not in {"missing"} and not isinstance(given, dict):
            msg += f" (got {given!r})"
        by_field.setdefault(where, [])
        if msg not in by_field[where]:
            by_field[where].append(msg)
    problems = []
    for where, msgs in by_field.items():
        # a union tries each form; show them all, as "expected one of"
        problems.append(f"`{where}`: " + ("; or ".join(msgs) if len(msgs) > 1 else msgs[0]))
    return problems
