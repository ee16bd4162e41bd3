"""Tool calls: the shared types (``types``) and the defensive parser of model output (``parse``).

The lowest layer of the package after ``errors``: it imports nothing else from ``toolrl_jax``.
"""

from toolrl_jax.toolcalls.types import ErrorKind, ToolCall, ToolResult

__all__ = ["ErrorKind", "ToolCall", "ToolResult"]
