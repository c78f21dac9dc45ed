"""Request bodies: a JSON-Schema subset that is both checked here and published in /openapi.json.

One schema per route serves the validation and the document, so what the API accepts is what it
documents. The subset is what the routes need: objects with typed properties (string, boolean, number,
integer, null, arrays of strings, string enums), `required`, `minimum`/`maximum`, and no unknown
properties. A number is always finite (JSON has no NaN or Infinity; 1e400 parses as infinity and is refused).
"""

from __future__ import annotations

import math
from typing import Any

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
NAME: Schema = {"type": "string", "minLength": 1, "maxLength": 1024}
BOOL: Schema = {"type": "boolean"}
NUMBER: Schema = {"type": "number"}
INTEGER: Schema = {"type": "integer"}
ANY_OBJECT: Schema = {"type": "object"}


def obj(required: list[str] | None = None, **props: Schema) -> Schema:
    out: Schema = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def nullable(schema: Schema) -> Schema:
    return {**schema, "type": [schema["type"], "null"]}


def enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


_PY = {
    "string": (str,),
    "boolean": (bool,),
    "number": (int, float),
    "integer": (int,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


def problems(schema: Schema, value: Any, path: str = "body") -> list[str]:
    """Why `value` does not fit `schema` (empty: it fits), one sentence per problem."""
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        ok = any(
            isinstance(value, _PY[t]) and not (t in ("number", "integer") and isinstance(value, bool)) for t in names
        )
        if not ok:
            return [f"{path}: must be {' or '.join(names)}"]
    out: list[str] = []
    if isinstance(value, str):
        if "enum" in schema and value not in schema["enum"]:
            out.append(f"{path}: must be one of {', '.join(schema['enum'])}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 30):
            out.append(f"{path}: length must be between {schema.get('minLength', 0)} and {schema.get('maxLength')}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return [f"{path}: must be a finite number"]
        if value < schema.get("minimum", value):
            out.append(f"{path}: must be at least {schema['minimum']}")
        if value > schema.get("maximum", value):
            out.append(f"{path}: must be at most {schema['maximum']}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += problems(schema["items"], item, f"{path}[{i}]")
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        for name in schema.get("required", []):
            if name not in value:
                out.append(f"{path}.{name}: required")
        for name, item in value.items():
            if name in props:
                out += problems(props[name], item, f"{path}.{name}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{path}.{name}: unknown field (known: {', '.join(props)})")
    return out
