"""Data: the common ``ToolTask`` record and its loaders (ToolRL, API-Bank, BFCL, generated), batching.

    from toolrl_jax.data import load_toolrl, load_apibank, load_bfcl, generate_tasks
    tasks = load_toolrl("../shared/data/toolrl/rlla_test.parquet")   # LoadedTasks (a sequence)
    print(tasks.summary())                                           # counts skipped bad records
"""

from toolrl_jax.data.apibank import load_apibank
from toolrl_jax.data.batching import BatchIterator, bucket_for, default_buckets, pad_batch
from toolrl_jax.data.bfcl import CATEGORY_GROUPS, expand_categories, load_bfcl
from toolrl_jax.data.generated import GENERATED_TOOLS, execute_call, generate_tasks, train_heldout_split
from toolrl_jax.data.task import (
    LoadedTasks,
    ToolTask,
    parse_ground_truth_calls,
    render_toolrl_output,
    toolrl_system_prompt,
)
from toolrl_jax.data.toolrl import load_toolrl, load_toolrl_json, load_toolrl_parquet

__all__ = [
    "BatchIterator",
    "CATEGORY_GROUPS",
    "GENERATED_TOOLS",
    "LoadedTasks",
    "ToolTask",
    "bucket_for",
    "default_buckets",
    "execute_call",
    "expand_categories",
    "generate_tasks",
    "load_apibank",
    "load_bfcl",
    "load_toolrl",
    "load_toolrl_json",
    "load_toolrl_parquet",
    "pad_batch",
    "parse_ground_truth_calls",
    "render_toolrl_output",
    "toolrl_system_prompt",
    "train_heldout_split",
]
