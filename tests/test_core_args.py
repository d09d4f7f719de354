"""edge_agent.core.args: tool argument checks over the JSON Schema subset device tools use
(JSON Schema 2020-12 validation keywords; the same rules on the Pi and the board)."""

from __future__ import annotations

import math

import pytest

from edge_agent.core import args

SERVO = {"type": "object", "properties": {
    "angle": {"type": "number", "minimum": -90, "maximum": 90, "x-unit": "°"},
    "speed": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10, "default": 5},
    "mode": {"type": "string", "enum": ["fast", "slow"]},
    "label": {"type": "string", "minLength": 1, "maxLength": 4},
    "steps": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 3},
    "opt": {"type": ["number", "null"]},
    "fixed": {"const": 42},
}, "required": ["angle"], "additionalProperties": False}


def test_supported_subset():
    assert args.supported(SERVO) and args.supported(True) and args.supported(False)
    assert args.supported({"type": "object", "description": "d", "title": "t", "$schema": "x"})
    assert not args.supported({"type": "object", "oneOf": [{}]})
    assert not args.supported({"type": "object", "properties": {"a": {"pattern": "^x"}}})
    assert not args.supported({"type": "array", "items": {"anyOf": []}})
    assert not args.supported({"additionalProperties": {"not": {}}})
    assert not args.supported({"properties": []}) and not args.supported({"type": 5})
    assert not args.supported(None) and not args.supported("object")


def test_valid_arguments_pass():
    assert args.check(SERVO, {"angle": 45}) is None
    assert args.check(SERVO, {"angle": -90, "speed": 9, "mode": "slow", "label": "abcd", "steps": [0, 1, 2],
                              "opt": None, "fixed": 42}) is None
    assert args.check(SERVO, {"angle": 90.0, "opt": 1.5}) is None


@pytest.mark.parametrize("arguments, problem", [
    ({}, "missing required argument angle"),
    ({"angle": 500}, "angle: 500 is above the maximum 90 °"),
    ({"angle": -91}, "angle: -91 is below the minimum -90 °"),
    ({"angle": "left"}, 'angle must be a number, not "left"'),
    ({"angle": True}, "angle must be a number, not true"),  # a bool is not a number
    ({"angle": 1, "speed": 0}, "speed: 0 must be above 0"),
    ({"angle": 1, "speed": 10}, "speed: 10 must be below 10"),
    ({"angle": 1, "speed": 2.5}, "speed must be an integer, not 2.5"),
    ({"angle": 1, "mode": "medium"}, 'mode must be one of "fast", "slow", not "medium"'),
    ({"angle": 1, "label": ""}, 'label: "" is below the minimum 1 characters'),
    ({"angle": 1, "label": "abcde"}, 'label: "abcde" is above the maximum 4 characters'),
    ({"angle": 1, "steps": []}, "steps: at least 1 items, not 0"),
    ({"angle": 1, "steps": [1, 2, 3, 4]}, "steps: at most 3 items, not 4"),
    ({"angle": 1, "steps": [1, -1]}, "steps[1]: -1 is below the minimum 0"),
    ({"angle": 1, "opt": "x"}, 'opt must be a number or null, not "x"'),
    ({"angle": 1, "fixed": 41}, "fixed must be 42, not 41"),
    ({"angle": 1, "extra": 1}, 'unknown argument "extra" (expected: angle, speed, mode, label, steps, opt, fixed)'),
])
def test_problems_name_the_argument_and_the_bound(arguments, problem):
    assert args.check(SERVO, arguments) == problem


def test_nan_and_infinity_are_refused_even_without_a_range():
    schema = {"type": "object", "properties": {"x": {"type": "number"}, "y": {}}}
    assert args.check(schema, {"x": math.nan}) == "x: NaN and infinity are not accepted"
    assert args.check(schema, {"x": math.inf}) == "x: NaN and infinity are not accepted"
    assert args.check(schema, {"y": -math.inf}) == "y: NaN and infinity are not accepted"
    assert args.check({"type": "object", "properties": {"n": {"type": "integer"}}}, {"n": math.inf}) \
        .startswith("n must be a finite integer")


def test_finite():
    assert args.finite(1.5) and args.finite("nan") and args.finite(None) and args.finite(10**400)
    assert not args.finite(math.nan) and not args.finite(-math.inf)
    assert not args.finite({"a": [1, {"b": math.nan}]}) and args.finite({"a": [1, {"b": 2.0}]})


def test_integral_floats_become_ints():
    arguments = {"angle": 1, "speed": 3.0}
    assert args.check(SERVO, arguments) is None
    assert arguments["speed"] == 3 and type(arguments["speed"]) is int


def test_enum_compares_types_but_numbers_by_value():
    schema = {"type": "object", "properties": {"v": {"enum": [1, "1", True]}}}
    assert args.check(schema, {"v": 1.0}) is None  # 1.0 == 1, both numbers
    assert args.check(schema, {"v": "1"}) is None and args.check(schema, {"v": True}) is None
    schema = {"type": "object", "properties": {"v": {"enum": [1]}}}
    assert args.check(schema, {"v": True}) is not None  # True == 1 in Python, not in JSON


def test_nested_objects_and_additional_properties_schemas():
    schema = {"type": "object", "properties": {"pos": {"type": "object", "properties": {
        "x": {"type": "number", "maximum": 10}}, "required": ["x"], "additionalProperties": False}},
        "additionalProperties": {"type": "string"}}
    assert args.check(schema, {"pos": {"x": 1}, "note": "hi"}) is None
    assert args.check(schema, {"pos": {"x": 11}}) == "pos.x: 11 is above the maximum 10"
    assert args.check(schema, {"pos": {}}) == "missing required argument pos.x"
    assert args.check(schema, {"pos": {"x": 1, "y": 2}}) == 'unknown argument pos."y" (expected: x)'
    assert args.check(schema, {"note": 5}) == "note must be a string, not 5"


def test_boolean_schemas_and_odd_inputs_never_raise():
    assert args.check_value(True, object(), "v") is None
    assert args.check_value(False, 1, "v") == "v: no value is allowed here"
    assert args.check({"type": "object", "properties": {"a": False}}, {"a": 1}) == "a: no value is allowed here"
    assert args.check(SERVO, [1, 2]) == "arguments must be an object"
    assert args.check(None, {"anything": 1}) is None  # no schema: nothing to check
    assert args.check({"type": "object", "properties": {"a": {"type": "quaternion"}}}, {"a": 1}) is None
    assert args.check({"additionalProperties": False}, {"x": 1}) == 'unknown argument "x" (expected: none)'
    assert args.check(SERVO, {"angle": "\ud800"}) == 'angle must be a number, not "\\ud800"'


def test_fill_defaults():
    assert args.fill_defaults(SERVO, {"angle": 1}) == {"angle": 1, "speed": 5}
    assert args.fill_defaults(SERVO, {"angle": 1, "speed": 2}) == {"angle": 1, "speed": 2}
    assert args.fill_defaults({}, {"a": 1}) == {"a": 1}
