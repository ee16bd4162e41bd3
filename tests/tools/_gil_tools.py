"""Module-level tools for the out-of-process tests (importable inside the sandbox; stdlib only)."""

from toolrl_jax.tools.base import function_tool


@function_tool
def big_power(exponent: int) -> int:
    """Bit length of 3 ** exponent: C big-integer work that holds the GIL throughout.

    Args:
        exponent: The exponent.
    """
    return (3 ** exponent).bit_length()


@function_tool
def fail_with(message: str) -> str:
    """Raises KeyError(message).

    Args:
        message: The message.
    """
    raise KeyError(message)
