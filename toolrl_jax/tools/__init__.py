"""Tools for tool-using policies: the `Tool` protocol and schema derivation (`base`), a threaded
executor with per-call timeouts (`executor`), a process sandbox for Python code
(`python_sandbox`) and small deterministic environments for tests and demos (`environments`)."""

from toolrl_jax.tools.base import (
    FunctionTool,
    Tool,
    ToolEnvironment,
    function_tool,
    openai_tools,
    validate_arguments,
)
from toolrl_jax.toolcalls.types import ToolCall, ToolResult
from toolrl_jax.tools.executor import ToolExecutor

__all__ = [
    "FunctionTool",
    "Tool",
    "ToolCall",
    "ToolEnvironment",
    "ToolExecutor",
    "ToolResult",
    "function_tool",
    "openai_tools",
    "validate_arguments",
]
