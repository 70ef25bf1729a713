"""The calibration file format (``<model>.calib.json``), version 1, as a JSON Schema, and its validator.

:data:`CALIBRATION_SCHEMA` is a standard JSON Schema (draft 2020-12 keywords) so other tools can check
the files; :func:`validate` implements the subset it uses (``type``, ``const``, ``enum``, ``minimum``,
``exclusiveMinimum``, ``maximum``, ``required``, ``properties``, ``additionalProperties``,
``propertyNames.pattern``, ``items``, ``minItems``) with one-line messages naming the offending field,
so avit needs no ``jsonschema`` dependency. Checks a schema cannot express (threshold counts equal to the
model's pause points) are in :mod:`avit.metadata.calibration`.

Versioning: ``format`` is always ``"avit-calibration"``; ``version`` is bumped on any incompatible change.
A reader refuses files of a newer version with a message saying so.
"""

from __future__ import annotations

import math
import re
from typing import Any

from avit.errors import ArtifactError

FORMAT = "avit-calibration"
VERSION = 1

_POS = {"type": "number", "exclusiveMinimum": 0}
_NONNEG = {"type": "number", "minimum": 0}
_VALUES = {"type": "array", "items": {"type": "number", "minimum": 0}}
_STATS = {
    "type": "object",
    "description": "per-call latency in ms: mean, percentiles (p50, p90, p95, p99, and the target's), samples n",
    "required": ["mean", "p50", "p90", "p95", "p99", "n"],
    "properties": {"n": {"type": "integer", "minimum": 1}},
    "propertyNames": {"pattern": "^(mean|n|p[0-9.]+)$"},
    "additionalProperties": _NONNEG,
}
_POINT = {
    "type": "object",
    "required": ["thresholds", "knobs", "latency_ms", "quality", "tokens_kept", "remeasured", "pareto"],
    "properties": {
        "thresholds": _VALUES,
        "knobs": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}},
        "latency_ms": _STATS,
        "quality": {"type": "number"},
        "tokens_kept": _VALUES,
        "remeasured": {"type": "boolean"},
        "pareto": {"type": "boolean"},
    },
}
_PRESET = {
    "type": "object",
    "required": ["thresholds", "latency_ms", "percentile", "batch", "quality", "tokens_kept"],
    "properties": {
        "thresholds": _VALUES,
        "latency_ms": {**_POS, "description": "the percentile's latency of one call of `batch` images, ms"},
        "percentile": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
        "batch": {"type": "integer", "minimum": 1},
        "quality": {"type": "number"},
        "tokens_kept": _VALUES,
        "description": {"type": "string"},
        "warning": {"type": "string", "description": "why the preset's output may be poor (e.g. too few tokens kept)"},
    },
}
_CHECK = {
    "type": "object",
    "required": ["images", "thresholds", "latency_ms", "quality", "target_ms", "tolerance", "passed"],
    "properties": {
        "images": {"type": "array", "items": {"type": "string"}},
        "thresholds": _VALUES,
        "latency_ms": _STATS,
        "reference_latency_ms": _STATS,
        "quality": {"type": "number"},
        "target_ms": _POS,
        "tolerance": _NONNEG,
        "passed": {"type": "boolean"},
        "load_factor": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "load_corrected_ms": {"type": ["number", "null"], "minimum": 0},
    },
}

#: JSON Schema of a version-1 calibration file.
CALIBRATION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://avit.dev/schemas/calibration-1.json",
    "title": "avit calibration file, version 1",
    "type": "object",
    "required": [
        "format", "version", "avit_version", "created", "model", "backend", "measurement", "target",
        "search", "points", "chosen", "heldout", "presets",
    ],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "avit_version": {"type": "string"},
        "created": {"type": "string"},
        "model": {
            "type": "object",
            "required": ["file", "sha256", "size_bytes", "policy", "pause_points", "num_patches"],
            "properties": {
                "file": {"type": "string"},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "size_bytes": {"type": "integer", "minimum": 1},
                "policy": {"enum": ["entropy", "confidence", "keep_ratio", "dtop", "acm"]},
                "pause_points": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
                "num_patches": {"type": "integer", "minimum": 1},
            },
        },
        "backend": {
            "type": "object",
            "required": ["name", "providers"],
            "properties": {
                "name": {"type": "string"},
                "providers": {"type": "array", "items": {"type": "string"}},
                "inference_precision": {"type": "string"},
                "cpu": {
                    "type": "object",
                    "description": "the CPU the latencies were measured on (optional: files before it record none); "
                                   "a session on another CPU type does not load the file automatically",
                    "required": ["model", "features"],
                    "properties": {
                        "model": {"type": "string"},
                        "vendor": {"type": "string"},
                        "family": {"type": ["integer", "null"]},
                        "model_number": {"type": ["integer", "null"]},
                        "features": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
        "measurement": {
            "type": "object",
            "required": ["batch", "percentile", "images", "repeats", "final_rounds", "metric", "reference"],
            "properties": {
                "batch": {"type": "integer", "minimum": 1},
                "percentile": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                "images": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "repeats": {"type": "integer", "minimum": 0},
                "final_rounds": {"type": "integer", "minimum": 1},
                "metric": {"type": "string"},
                "reference": {"type": "string"},
            },
        },
        "target": {
            "type": "object",
            "required": ["latency_ms", "percentile", "batch", "met"],
            "properties": {
                "latency_ms": _POS,
                "percentile": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                "batch": {"type": "integer", "minimum": 1},
                "met": {"type": "boolean"},
            },
        },
        "search": {
            "type": "object",
            "required": ["evaluations", "timed", "seconds", "exhausted"],
            "properties": {
                "evaluations": {"type": "integer", "minimum": 0},
                "timed": {"type": "integer", "minimum": 0},
                "seconds": _NONNEG,
                "exhausted": {"type": "boolean"},
            },
        },
        "points": {"type": "array", "items": _POINT, "minItems": 1},
        "chosen": {**_POINT, "required": [*_POINT["required"], "meets_target"],
                   "properties": {**_POINT["properties"], "meets_target": {"type": "boolean"}}},
        "heldout": {"type": ["object", "null"], **{k: v for k, v in _CHECK.items() if k != "type"}},
        "presets": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z0-9_.-]+$"},
            "additionalProperties": _PRESET,
        },
    },
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate(value: Any, schema: dict[str, Any], where: str = "") -> None:
    """Check ``value`` against ``schema`` (the subset of JSON Schema listed in the module docstring).

    Raises:
        ArtifactError: ``"<field path>: <what is wrong>"`` for the first violation found.
    """
    here = where or "(top level)"

    def fail(msg: str) -> None:
        raise ArtifactError(f"{here}: {msg}")

    if "const" in schema and value != schema["const"]:
        fail(f"must be {schema['const']!r}, got {_show(value)}")
    if "enum" in schema and value not in schema["enum"]:
        fail(f"must be one of {', '.join(map(str, schema['enum']))}, got {_show(value)}")
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in types):
            fail(f"must be {' or '.join('a finite number' if t == 'number' else 'an ' + t if t[0] in 'aeiou' else 'a ' + t for t in types)}, got {_show(value)}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            fail(f"must be >= {schema['minimum']}, got {value}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            fail(f"must be > {schema['exclusiveMinimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            fail(f"must be <= {schema['maximum']}, got {value}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        fail(f"{_show(value)} does not match {schema['pattern']}")
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                fail(f"missing required field {key!r}")
        props = schema.get("properties", {})
        names = schema.get("propertyNames")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if names is not None and not re.search(names["pattern"], key):
                raise ArtifactError(f"{path}: field name does not match {names['pattern']}")
            if key in props:
                validate(item, props[key], path)
            elif extra is False:
                raise ArtifactError(f"{path}: unknown field")
            elif isinstance(extra, dict):
                validate(item, extra, path)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            fail(f"must have at least {schema['minItems']} item(s), got {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], f"{where}[{i}]")
