"""Schema derivation from typed functions + Google docstrings, and argument validation.

Expected schemas are written by hand from the OpenAI function-calling format."""

import enum
from typing import Literal, Optional

import pytest

from toolrl_jax.tools.base import (
    FunctionTool,
    Tool,
    function_tool,
    openai_tools,
    parse_google_docstring,
    type_to_schema,
    validate_arguments,
)


def test_schema_from_typed_function_and_docstring():
    @function_tool
    def search_flights(origin: str, destination: str, max_stops: int = 1,
                       cabin: Literal["economy", "business"] = "economy",
                       budget: Optional[float] = None, airlines: list[str] = None,
                       refundable: bool = False) -> list:
        """Search flights between two airports.

        Looks only at direct and one-stop flights
        within the next year.

        Args:
            origin: IATA code of the departure
                airport, e.g. "CDG".
            destination (str): IATA code of the arrival airport.
            max_stops: Maximum number of stops.
            cabin: Cabin class.
            budget: Highest price in euros.
            airlines: Allowed airline codes.
            refundable: Only refundable fares.

        Returns:
            A list of flights.
        """

    assert isinstance(search_flights, FunctionTool) and isinstance(search_flights, Tool)
    assert search_flights.state_param is None
    assert search_flights.schema == {
        "name": "search_flights",
        "description": "Search flights between two airports. Looks only at direct and one-stop "
                       "flights within the next year.",
        "parameters": {
            "type": "object",
            "properties": {
                "origin": {"type": "string",
                           "description": 'IATA code of the departure airport, e.g. "CDG".'},
                "destination": {"type": "string", "description": "IATA code of the arrival airport."},
                "max_stops": {"type": "integer", "description": "Maximum number of stops.",
                              "default": 1},
                "cabin": {"type": "string", "enum": ["economy", "business"],
                          "description": "Cabin class.", "default": "economy"},
                "budget": {"type": ["number", "null"], "description": "Highest price in euros."},
                "airlines": {"type": "array", "items": {"type": "string"},
                             "description": "Allowed airline codes."},
                "refundable": {"type": "boolean", "description": "Only refundable fares.",
                               "default": False},
            },
            "required": ["origin", "destination"],
        },
    }
    assert openai_tools([search_flights]) == [{"type": "function", "function": search_flights.schema}]


def test_state_parameter_is_hidden_and_name_override():
    @function_tool(name="add_item", description="Add an item.")
    def add(item: str, state: dict, quantity: int = 1) -> str:
        state[item] = state.get(item, 0) + quantity
        return "ok"

    assert add.name == "add_item" and add.state_param == "state"
    assert add.schema == {
        "name": "add_item", "description": "Add an item.",
        "parameters": {"type": "object",
                       "properties": {"item": {"type": "string"},
                                      "quantity": {"type": "integer", "default": 1}},
                       "required": ["item"]},
    }
    box: dict = {}
    assert add(item="pen", quantity=2, state=box) == "ok" and box == {"pen": 2}


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@pytest.mark.parametrize("annotation, expected", [
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (str, {"type": "string"}),
    (bool, {"type": "boolean"}),
    (list, {"type": "array"}),
    (list[int], {"type": "array", "items": {"type": "integer"}}),
    (tuple[float, ...], {"type": "array", "items": {"type": "number"}}),
    (dict, {"type": "object"}),
    (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
    (Literal[1, 2, 3], {"type": "integer", "enum": [1, 2, 3]}),
    (Literal["a", 1], {"enum": ["a", 1]}),
    (Optional[str], {"type": ["string", "null"]}),
    (int | None, {"type": ["integer", "null"]}),
    (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
    (Color, {"type": "string", "enum": ["red", "blue"]}),
    (list[list[bool]], {"type": "array", "items": {"type": "array", "items": {"type": "boolean"}}}),
])
def test_type_to_schema(annotation, expected):
    assert type_to_schema(annotation) == expected


def test_unsupported_annotations_and_signatures_raise():
    class Custom:
        pass

    with pytest.raises(TypeError, match="cannot derive"):
        type_to_schema(Custom)
    with pytest.raises(TypeError, match=r"\*args"):
        function_tool(lambda *values: None)


def test_google_docstring_sections():
    doc = """Summary.

    Args:
        x (int): first
            continued.
        **kwargs: extra.
    Raises:
        ValueError: not an argument.
    """
    description, args = parse_google_docstring(doc)
    assert description == "Summary."
    assert args == {"x": "first continued.", "kwargs": "extra."}
    assert parse_google_docstring(None) == ("", {})


WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "scale": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}},
                  "required": ["lat"]},
        "note": {"type": ["string", "null"]},
    },
    "required": ["city"],
}


@pytest.mark.parametrize("arguments, expected", [
    ({"city": "Paris"}, []),
    ({"city": "Paris", "days": 3, "scale": 2, "note": None, "tags": ["a"],
      "where": {"lat": 1.5}}, []),
    ({}, ["missing required argument 'city'"]),
    ({"city": "Paris", "country": "FR"},
     ["unknown argument 'country' (expected: city, days, unit, scale, tags, where, note)"]),
    ({"city": 3}, ["argument 'city' must be string, got integer 3"]),
    ({"city": "x", "days": "3"}, ["argument 'days' must be integer, got string '3'"]),
    ({"city": "x", "days": True}, ["argument 'days' must be integer, got boolean True"]),
    ({"city": "x", "days": 2.5}, ["argument 'days' must be integer, got number 2.5"]),
    ({"city": "x", "scale": False}, ["argument 'scale' must be number, got boolean False"]),
    ({"city": "x", "unit": "kelvin"},
     ["argument 'unit' must be one of ['celsius', 'fahrenheit'], got 'kelvin'"]),
    ({"city": "x", "tags": ["a", 2]}, ["argument 'tags[1]' must be string, got integer 2"]),
    ({"city": "x", "where": {}}, ["missing required argument 'where.lat'"]),
    ({"city": "x", "note": 5}, ["argument 'note' must be string or null, got integer 5"]),
    ("city=Paris", ["arguments must be a JSON object, got string 'city=Paris'"]),
    ({"days": 1, "extra": 0}, ["missing required argument 'city'",
                               "unknown argument 'extra' (expected: city, days, unit, scale, "
                               "tags, where, note)"]),
])
def test_validate_arguments(arguments, expected):
    assert validate_arguments(WEATHER, arguments) == expected


def test_validation_of_a_derived_schema_round_trip():
    @function_tool
    def book(room: int, guests: list[str], vip: bool = False) -> str:
        """Book a room.

        Args:
            room: Room number.
            guests: Guest names.
            vip: VIP treatment.
        """
        return f"{room}:{len(guests)}:{vip}"

    params = book.schema["parameters"]
    assert validate_arguments(params, {"room": 12, "guests": ["a", "b"]}) == []
    assert validate_arguments(params, {"room": "12", "guests": "a"}) == [
        "argument 'room' must be integer, got string '12'",
        "argument 'guests' must be array, got string 'a'",
    ]
    assert validate_arguments({"type": "object", "properties": {}}, {"x": 1}) == [
        "unknown argument 'x' (expected: no arguments)"]
