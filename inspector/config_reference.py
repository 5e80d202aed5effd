"""`inspector config reference`: the configuration reference (docs/configuration.md), generated from the settings' JSON schema.

Everything in the page comes from `settings_schema()`: sections, keys, types, defaults, bounds, allowed values and
descriptions. The environment variable of a key is its dotted path under `INSPECTOR_` with `__` between levels.
`tests/test_config_reference.py` fails when the committed page differs from this output.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from inspector.config import DEFAULT_CONFIG, ENV_PREFIX, settings_schema

REGENERATE = ".venv/bin/inspector config reference > docs/configuration.md"

_INTRO = f"""\
# Configuration reference

Generated from the settings' JSON schema (`inspector/config.py`) by `inspector config reference`; do not
edit it by hand. After changing a setting, regenerate it:

    {REGENERATE}

`tests/test_config_reference.py` fails while this page and the code disagree.

For: controls engineers (station, source, MQTT), quality engineers (decision), ML engineers (model,
preprocess, rois), and whoever runs the line PC (pipeline, journal, metrics, log).

## How settings are read

- One YAML file: `{DEFAULT_CONFIG}` when it exists, or the file given with `--config FILE`. Start from
  `deploy/inspector.example.yaml`.
- Environment variables override the file: `{ENV_PREFIX}` + the dotted path in upper case, with `__` between
  levels: `decision.threshold` is `{ENV_PREFIX}DECISION__THRESHOLD=0.3`, `mqtt.tls.enabled` is
  `{ENV_PREFIX}MQTT__TLS__ENABLED=true`. Lists and mappings are given as JSON:
  `{ENV_PREFIX}MODEL__PROVIDERS='["cpu"]'`, `{ENV_PREFIX}DECISION__ROI_THRESHOLDS='{{"roi2": 0.35}}'`.
  The fields of a list item (`rois[].name`) have no variable of their own: set the whole list.
- Unknown keys, in the file or in an `{ENV_PREFIX}` variable, are errors, as is any value outside the bounds
  below. Setting any key of an optional section (`preprocess`) creates that section, with defaults for the rest.
- Check a file: `inspector config check FILE` (one `dotted.path: message` line per error, exit 2 if any);
  `inspector config check --run FILE` also checks what `inspector run` needs (the source folder; a camera uri
  naming a folder), `model.path`, certificate and password files, the journal's folder). Both check that `model.path`
  exists and that a `decision.calibration` record belongs to this station and model. `inspector config show [--config FILE]` prints the
  effective settings (file and environment; a calibration record's thresholds in place of the file's), secrets masked; `inspector config schema` prints the JSON schema
  this page is made from.

In the tables, "default" is the value used when the key is absent (`null`: unset); bounds are inclusive unless
written with `<` or `>`.
"""


def configuration_reference() -> str:
    """The configuration reference as Markdown: every section and key of `InspectorSettings`."""
    schema = settings_schema()
    defs: dict[str, Any] = schema.get("$defs", {})
    out = [_INTRO]
    sections = list(schema["properties"].items())
    out.append("## Sections\n")
    for name, prop in sections:
        out.append(f"- [`{name}`](#{name}): {_one_line(prop.get('description', ''))}")
    out.append("")
    for name, prop in sections:
        out.append(_section(name, prop, defs))
    return "\n".join(out).rstrip() + "\n"


# --- sections -----------------------------------------------------------------------------------


def _section(name: str, prop: dict[str, Any], defs: dict[str, Any]) -> str:
    lines = [f"## {name}", ""]
    obj, nullable = _object_of(prop, defs)
    item = _list_item_object(prop, defs)
    text = _one_line(prop.get("description", ""))
    if obj is not None and obj.get("description"):
        inner = _one_line(obj["description"])
        # "The ONNX classifier." then "The ONNX classifier and how ...": the longer one says it all
        text = inner if inner.startswith(text.rstrip(".")) else f"{text} {inner}".strip()
    lines.append(text)
    lines.append("")
    if nullable or item is not None:
        default = _default(prop, defs, required=False)
        lines.append(f"Optional: default {default}; environment variable `{_env(name)}`.")
        lines.append("")
    rows: list[tuple[str, str, str, str, str, str]] = []
    if obj is not None:
        _rows(name, obj, defs, rows, env=True)
    elif item is not None:
        _rows(f"{name}[]", item, defs, rows, env=False)
    else:  # a plain top-level value
        rows.append(_row(name, prop, defs, required=False, env=True))
    lines.append("| key | type | default | allowed values | description | environment variable |")
    lines.append("|---|---|---|---|---|---|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    lines.append("")
    return "\n".join(lines)


def _rows(prefix: str, obj: dict[str, Any], defs: dict[str, Any], rows: list[tuple[str, str, str, str, str, str]], *, env: bool) -> None:
    """One row per key of `obj`; nested objects are expanded (`a.b.c`), lists of objects as `a[].b`."""
    required = set(obj.get("required", []))
    for key, prop in obj.get("properties", {}).items():
        path = f"{prefix}.{key}"
        nested, _ = _object_of(prop, defs)
        item = _list_item_object(prop, defs)
        if nested is not None and "properties" in nested and not _is_nullable(prop):
            _rows(path, nested, defs, rows, env=env)
            continue
        rows.append(_row(path, prop, defs, required=key in required, env=env))
        if item is not None:
            _rows(f"{path}[]", item, defs, rows, env=False)
        elif nested is not None and "properties" in nested:
            _rows(path, nested, defs, rows, env=env)


def _row(path: str, prop: dict[str, Any], defs: dict[str, Any], *, required: bool, env: bool) -> tuple[str, str, str, str, str, str]:
    kind, allowed = _type(prop, defs)
    description = _one_line(prop.get("description", "") or _resolve(prop, defs).get("description", ""))
    if env:
        variable = f"`{_env(path)}`"
    else:
        owner = path.split("[]")[0]
        variable = f"(in `{_env(owner)}`, as JSON)"
    return f"`{path}`", kind, _default(prop, defs, required=required), allowed, description, variable


# --- types, bounds, defaults ------------------------------------------------------------------------


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if ref is None:
        return prop
    return defs[ref.rsplit("/", 1)[-1]]


def _variants(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return prop.get("anyOf", [prop])


def _is_nullable(prop: dict[str, Any]) -> bool:
    return any(v.get("type") == "null" for v in _variants(prop))


def _object_of(prop: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The object schema behind `prop` (through $ref and `X | None`), and whether it may be null."""
    for v in _variants(prop):
        r = _resolve(v, defs)
        if r.get("type") == "object" and "properties" in r:
            return r, _is_nullable(prop)
    return None, False


def _list_item_object(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """The item object schema of a list of objects, else None."""
    for v in _variants(prop):
        if v.get("type") == "array" and "items" in v:
            r = _resolve(v["items"], defs)
            if r.get("type") == "object" and "properties" in r:
                return r
    return None


def _type(prop: dict[str, Any], defs: dict[str, Any]) -> tuple[str, str]:
    """(type in words, allowed values and bounds in words)."""
    kinds, allowed = [], []
    nullable = False
    for v in _variants(prop):
        if v.get("type") == "null":
            nullable = True
            continue
        kind, bounds = _one_type(v, defs)
        kinds.append(kind)
        if bounds:
            allowed.append(bounds)
    kind = " or ".join(kinds) or "any"
    if nullable:
        kind += " or null"
    consts = [_resolve(v, defs).get("const") for v in _variants(prop) if "const" in _resolve(v, defs)]
    if consts and "boolean" in kinds and len(allowed) == len(consts):
        # `bool | Literal["auto"]`: the values are the two booleans and the literals, not "only auto".
        return kind, "one of " + ", ".join(f"`{_inline(c)}`" for c in (True, False, *consts))
    return kind, "; ".join(allowed) or "-"


def _one_type(v: dict[str, Any], defs: dict[str, Any]) -> tuple[str, str]:
    r = _resolve(v, defs)
    if "enum" in r:
        return "string", "one of " + ", ".join(f"`{_inline(e)}`" for e in r["enum"])
    if "const" in r:  # Literal["auto"] beside another type
        return "string", f"only `{_inline(r['const'])}`"
    t = r.get("type")
    if t == "string":
        fmt = r.get("format")
        kind = {"path": "path", "password": "secret string"}.get(fmt, "string")
        return kind, _bounds(r)
    if t in ("integer", "number", "boolean"):
        return t, _bounds(r)
    if t == "array":
        if "prefixItems" in r:
            parts = [_one_type(i, defs) for i in r["prefixItems"]]
            kinds = [p[0] for p in parts]
            bounds = sorted({p[1] for p in parts if p[1]})
            text = f"list of {len(kinds)}: " + ", ".join(kinds) if len(set(kinds)) > 1 else f"list of {len(kinds)} {kinds[0]}s"
            return text, ("each " + bounds[0]) if len(bounds) == 1 else "; ".join(bounds)
        item = r.get("items", {})
        item_obj = _resolve(item, defs)
        if item_obj.get("type") == "object" and "properties" in item_obj:
            item_kind, item_bounds = "objects", ""
        else:
            item_kind, item_bounds = _one_type(item, defs)
            item_kind += "s"
        bounds = [b for b in (_bounds(r), f"items: {item_bounds}" if item_bounds else "") if b]
        return f"list of {item_kind}", "; ".join(bounds)
    if t == "object":
        values = r.get("additionalProperties")
        if isinstance(values, dict):
            vk, vb = _one_type(values, defs)
            return f"mapping of name to {vk}", f"values: {vb}" if vb else ""
        return "mapping", ""
    return t or "any", ""


def _bounds(r: dict[str, Any]) -> str:
    parts = []
    lo, hi = r.get("minimum"), r.get("maximum")
    xlo, xhi = r.get("exclusiveMinimum"), r.get("exclusiveMaximum")
    if lo is not None and hi is not None:
        parts.append(f"{_num(lo)} to {_num(hi)}")
    else:
        if lo is not None:
            parts.append(f">= {_num(lo)}")
        if hi is not None:
            parts.append(f"<= {_num(hi)}")
    if xlo is not None:
        parts.insert(0, f"> {_num(xlo)}")
    if xhi is not None:
        parts.append(f"< {_num(xhi)}")
    if "minLength" in r and "maxLength" in r:
        parts.append(f"length {r['minLength']} to {r['maxLength']}")
    elif "minLength" in r:
        parts.append(f"length >= {r['minLength']}")
    elif "maxLength" in r:
        parts.append(f"length <= {r['maxLength']}")
    if "minItems" in r and "maxItems" in r and r["minItems"] == r["maxItems"]:
        pass  # a fixed-length list: its length is in the type
    else:
        if "minItems" in r:
            parts.append(f"at least {r['minItems']} item{'s' if r['minItems'] != 1 else ''}")
        if "maxItems" in r:
            parts.append(f"at most {r['maxItems']} items")
    if "pattern" in r:
        parts.append(f"pattern `{r['pattern']}`")
    return ", ".join(parts)


def _num(x: float) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e15 else str(x)


def _default(prop: dict[str, Any], defs: dict[str, Any], *, required: bool) -> str:
    if required:
        return "required"
    if "default" in prop:
        return f"`{_inline(prop['default'])}`"
    r = _resolve(prop, defs)
    if r.get("type") == "object" and "properties" not in r:
        return "`{}`"  # a mapping made by default_factory
    if r.get("type") == "array":
        return "`[]`"
    return "-"


def _inline(value: Any) -> str:
    """A default as it would be written in the YAML file, on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        # Quoted where YAML would read something else: "5" (a number), "*.tmp", ".*"
        plain = value and all(c.isalnum() or c in "/._-" for c in value) and isinstance(yaml.safe_load(value), str)
        return value if plain else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_inline(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _env(path: str) -> str:
    return ENV_PREFIX + "__".join(part.upper() for part in path.split("."))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
