"""Pydantic's validation errors as lines a user can act on: the dotted path of the field, the value
given, what was expected, and a "did you mean" for unknown keys."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["unknown_keys", "format_errors", "without_refused", "concerns"]


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


#: what a type error of each kind expected, in words; a union of several reads as one line
_EXPECTED = {
    "model_type": "a mapping", "dict_type": "a mapping", "model_attributes_type": "a mapping",
    "is_instance_of": "a mapping", "list_type": "a list", "bool_type": "true or false",
    "bool_parsing": "true or false", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
    "string_type": "text", "path_type": "a path",
}


def _is_type_error(kind: str) -> bool:
    return kind in _EXPECTED or kind == "literal_error" or kind.endswith("_type")


def _expected(e: dict) -> str:
    if e["type"] == "literal_error":
        return e["msg"].removeprefix("Input should be ")
    return _EXPECTED.get(e["type"], e["msg"].removeprefix("Input should be "))


def _given(given: Any) -> str:
    shown = repr(given)
    return f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def _one_line(where: str, errs: list[dict], deeper: bool) -> str | None:
    """One message for the problems Pydantic found at ``where``, each branch of a union tried in
    turn: the branch that got furthest speaks (a range error, a wrong element), else one "expected
    a, b or c" for the forms it could have taken."""
    value_errs = [e for e in errs if not _is_type_error(e["type"])]
    if value_errs:
        msgs: list[str] = []
        for e in value_errs:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] != "missing" and not isinstance(e.get("input"), dict):
                msg += _given(e.get("input"))
            if msg not in msgs:
                msgs.append(msg)
        return f"`{where}`: " + "; ".join(msgs)
    if deeper:  # the value had the right shape for a form whose inner problem is reported
        return None
    forms: list[str] = []
    for e in errs:
        if _expected(e) not in forms:
            forms.append(_expected(e))
    said = forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]
    return f"`{where}`: expected {said}" + _given(errs[0].get("input"))


def format_errors(err: ValidationError) -> list[str]:
    by_field: dict[str, list[dict]] = {}
    for e in err.errors(include_url=False):
        if e["type"] == "extra_forbidden":
            continue
        by_field.setdefault(_format_loc(tuple(e["loc"])) or "(top level)", []).append(dict(e))
    problems = []
    for where, errs in by_field.items():
        deeper = any(w.startswith((where + ".", where + "[")) for w in by_field)
        line = _one_line(where, errs, deeper)
        if line is not None:
            problems.append(line)
    return problems


def without_refused(raw: dict, e: ValidationError, fields: set[str]) -> tuple[set[str], dict]:
    """The fields the schema refused (``search.dropout``, or a whole top-level key) and the
    study without them, so that the rest is still checked: the ``search`` section keeps its
    valid parameters (a bad range must not hide a second one)."""
    bad: set[str] = set()
    partial = {k: v for k, v in raw.items() if k in fields}
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        if not loc:
            continue
        if loc[0] == "search" and len(loc) > 1 and isinstance(partial.get("search"), dict):
            bad.add(f"search.{loc[1]}")
            partial["search"] = {k: v for k, v in partial["search"].items() if k != loc[1]}
        else:
            bad.add(loc[0])
            partial.pop(loc[0], None)
    return bad, partial


def concerns(problem: str, bad: set[str]) -> bool:
    """Whether ``problem`` is about a refused field (a cross-field check that read the stand-in
    default of a refused search parameter says nothing true)."""
    for k in bad:
        if problem.startswith(f"`{k}`") or problem.startswith(f"`{k}."):
            return True
        if k.startswith("search.") and re.search(rf"\b{re.escape(k[7:])}\b", problem):
            return True
    return False
