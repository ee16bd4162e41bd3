"""Evaluation of any text-in/text-out model: BFCL (bfcl-eval's own checkers), API-Bank, ToolRL test.

A model enters as ``predict_fn(tasks: Sequence[ToolTask]) -> Sequence[str]`` (one completion per
task), so the same code scores a JAX policy, a scripted baseline or ground truth:

    from toolrl_jax.eval import evaluate_bfcl, print_report
    results = evaluate_bfcl(predict_fn, ["simple", "multiple", "parallel", "parallel_multiple"], limit=50)
    print_report(results, "my-model", output="bfcl.json")
"""

from toolrl_jax.eval.apibank import evaluate_apibank, evaluate_apibank_tasks, score_apibank
from toolrl_jax.eval.bfcl import evaluate_bfcl, run_multi_turn, score_bfcl_task, summarize_bfcl
from toolrl_jax.eval.calls import parse_calls, render_python_calls
from toolrl_jax.eval.report import format_table, print_report, write_json
from toolrl_jax.eval.toolrl import evaluate_toolrl, exact_match

__all__ = [
    "evaluate_apibank",
    "evaluate_apibank_tasks",
    "evaluate_bfcl",
    "evaluate_toolrl",
    "exact_match",
    "format_table",
    "parse_calls",
    "print_report",
    "render_python_calls",
    "run_multi_turn",
    "score_apibank",
    "score_bfcl_task",
    "summarize_bfcl",
    "write_json",
]
