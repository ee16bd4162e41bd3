"""Small deterministic tool environments for engine tests and the demo.

* `FunctionCallingEnvironment`: stateless tools with pure Python implementations: a calculator
  (safe arithmetic, no eval), a unit converter and a weather lookup over a fixed table.
* `BankEnvironment`: a stateful example: each trajectory gets its own `BankState` (accounts and
  a transaction log) from `reset(trajectory_id, task)`, and the tools mutate that object only.
  The final state is what a state-based reward checks (BFCL multi-turn style).
"""

from __future__ import annotations

import ast
import dataclasses
import math
import operator
from collections.abc import Hashable, Mapping
from typing import Any, Literal

from toolrl_jax.tools.base import FunctionTool, function_tool

__all__ = [
    "BankEnvironment",
    "BankState",
    "FunctionCallingEnvironment",
    "calculate",
    "convert_units",
    "evaluate_arithmetic",
    "get_weather",
]

# --------------------------------------------------------------------------- stateless tools

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max,
              "log": math.log, "exp": math.exp, "sin": math.sin, "cos": math.cos}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_MAX_INT_BITS = 4096  # about 1233 decimal digits: every result stays cheap to compute and print


def _bounded(op: type, left: Any, right: Any) -> None:
    """Raises ValueError when an integer ``**`` or ``*`` would pass ``_MAX_INT_BITS``.

    Big-integer work runs in C holding the GIL, so no timeout could stop it: the size of the
    result is checked before computing it ((9**999)**999 is refused at once).
    """
    if not (isinstance(left, int) and isinstance(right, int)):
        return
    if op is ast.Pow and right > 0 and abs(left) > 1 and left.bit_length() * right > _MAX_INT_BITS:
        raise ValueError(f"result too large (more than {_MAX_INT_BITS} bits)")
    if op is ast.Mult and left.bit_length() + right.bit_length() > _MAX_INT_BITS + 1:
        raise ValueError(f"result too large (more than {_MAX_INT_BITS} bits)")


def evaluate_arithmetic(expression: str) -> float | int:
    """Evaluates +, -, *, /, //, %, ** on numbers, a few math functions and pi/e.

    Walks the AST (no eval); expressions are capped at 200 characters, exponents at 1000 and
    integer results at 4096 bits (checked before computing), so a model cannot make the host
    compute 9**9**9 or ((9**999)**999)**999: every call is bounded and safe to run in-thread.

    Raises:
        ValueError: for anything else (names, attributes, calls to other functions, ...).
    """
    if len(expression) > 200:
        raise ValueError("expression longer than 200 characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"invalid expression: {exc.msg}") from None

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 1000:
                raise ValueError("exponent too large")
            _bounded(type(node.op), left, right)
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in _FUNCTIONS and not node.keywords):
            args = [walk(a) for a in node.args]
            if node.func.id == "round" and len(args) == 2 and (
                    not isinstance(args[1], int) or abs(args[1]) > 100):
                raise ValueError("round() digits must be an integer in [-100, 100]")
            return _FUNCTIONS[node.func.id](*args)
        raise ValueError(f"unsupported syntax: {ast.dump(node)[:60]}")

    return walk(tree)


@function_tool
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: Arithmetic using + - * / // % ** and parentheses, e.g. "(3 + 4) * 2".
            Functions sqrt, abs, round, min, max, log, exp, sin, cos and constants pi, e.
    """
    value = evaluate_arithmetic(expression)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return str(value)


_LENGTH_M = {"m": 1.0, "km": 1000.0, "cm": 0.01, "mm": 0.001, "mi": 1609.344, "ft": 0.3048,
             "in": 0.0254}
_MASS_KG = {"kg": 1.0, "g": 0.001, "lb": 0.45359237, "oz": 0.028349523125}
_TEMPERATURE = ("c", "f", "k")
Unit = Literal["m", "km", "cm", "mm", "mi", "ft", "in", "kg", "g", "lb", "oz", "c", "f", "k"]


@function_tool
def convert_units(value: float, from_unit: Unit, to_unit: Unit) -> str:
    """Convert a quantity between units of length, mass or temperature.

    Args:
        value: The quantity to convert.
        from_unit: Unit of `value` (m, km, cm, mm, mi, ft, in, kg, g, lb, oz, c, f, k).
        to_unit: Unit to convert to; must measure the same kind of quantity.
    """
    for table in (_LENGTH_M, _MASS_KG):
        if from_unit in table and to_unit in table:
            return f"{round(value * table[from_unit] / table[to_unit], 6):g} {to_unit}"
    if from_unit in _TEMPERATURE and to_unit in _TEMPERATURE:
        kelvin = {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[from_unit]
        out = {"c": kelvin - 273.15, "f": (kelvin - 273.15) * 9 / 5 + 32, "k": kelvin}[to_unit]
        return f"{round(out, 6):g} {to_unit}"
    raise ValueError(f"cannot convert {from_unit} to {to_unit}: different kinds of quantity")


_WEATHER_C = {  # city -> (temperature in Celsius, condition); fixed so tests are deterministic
    "paris": (18, "cloudy"), "london": (14, "rain"), "tokyo": (24, "sunny"),
    "new york": (21, "sunny"), "sydney": (16, "windy"), "cairo": (33, "sunny"),
}


@function_tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Current weather for a city.

    Args:
        city: City name, e.g. "Paris".
        unit: Temperature unit of the answer.
    """
    key = city.strip().lower()
    if key not in _WEATHER_C:
        raise ValueError(f"unknown city {city!r}; known: {', '.join(sorted(_WEATHER_C))}")
    celsius, condition = _WEATHER_C[key]
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32, 1)
    return {"city": city, "temperature": temperature, "unit": unit, "condition": condition}


@dataclasses.dataclass(frozen=True)
class FunctionCallingEnvironment:
    """Stateless calculator / unit converter / weather tools (reset returns None)."""

    tools: tuple[FunctionTool, ...] = (calculate, convert_units, get_weather)

    def reset(self, trajectory_id: Hashable, task: Any = None) -> None:
        return None


# --------------------------------------------------------------------------- stateful example


@dataclasses.dataclass
class BankState:
    """One trajectory's bank: balances in cents-free floats and an append-only log."""

    balances: dict[str, float]
    log: list[str] = dataclasses.field(default_factory=list)


def _account(state: BankState, account: str) -> str:
    if account not in state.balances:
        raise ValueError(f"no account named {account!r}; accounts: {', '.join(state.balances)}")
    return account


def _check_amount(amount: float) -> None:
    """NaN and infinities pass `amount > 0` tests the wrong way (NaN <= 0 is False too)."""
    if not (math.isfinite(amount) and amount > 0):
        raise ValueError(f"amount must be a positive finite number, got {amount!r}")


@function_tool
def get_balance(account: str, state: BankState) -> str:
    """Balance of an account.

    Args:
        account: Account name, e.g. "checking".
    """
    return f"{state.balances[_account(state, account)]:.2f}"


@function_tool
def deposit(account: str, amount: float, state: BankState) -> str:
    """Deposit money into an account.

    Args:
        account: Account name.
        amount: Positive amount to add.
    """
    _check_amount(amount)
    state.balances[_account(state, account)] += amount
    state.log.append(f"deposit {account} {amount:.2f}")
    return f"new balance of {account}: {state.balances[account]:.2f}"


@function_tool
def transfer(from_account: str, to_account: str, amount: float, state: BankState) -> str:
    """Move money between two accounts.

    Args:
        from_account: Account to take the money from.
        to_account: Account to put the money into.
        amount: Positive amount, at most the balance of `from_account`.
    """
    _account(state, from_account)
    _account(state, to_account)
    _check_amount(amount)
    if state.balances[from_account] < amount:
        raise ValueError(f"insufficient funds in {from_account}")
    state.balances[from_account] -= amount
    state.balances[to_account] += amount
    state.log.append(f"transfer {from_account} {to_account} {amount:.2f}")
    return f"moved {amount:.2f} from {from_account} to {to_account}"


@dataclasses.dataclass(frozen=True)
class BankEnvironment:
    """Stateful tools over per-trajectory `BankState`.

    `reset(trajectory_id, task)` copies `task["balances"]` (default: checking 100, savings 50).
    """

    tools: tuple[FunctionTool, ...] = (get_balance, deposit, transfer)
    default_balances: tuple[tuple[str, float], ...] = (("checking", 100.0), ("savings", 50.0))

    def reset(self, trajectory_id: Hashable, task: Any = None) -> BankState:
        balances = task.get("balances") if isinstance(task, Mapping) else None
        source = balances if balances is not None else dict(self.default_balances)
        return BankState(balances={str(k): float(v) for k, v in source.items()})
