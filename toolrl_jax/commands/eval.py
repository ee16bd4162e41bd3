"""`toolrl-jax eval --model M --benchmark {bfcl,apibank,toolrl,generated}`: greedy evaluation.

The model answers each task's chat prompt (its own chat template, as token ids) greedily with the
jitted KV-cache sampler; `toolrl_jax.eval` scores the answers (bfcl-eval's own AST and multi-turn
checkers for BFCL, exact match for API-Bank, exact match + ToolRL reward for the ToolRL split),
prints a table in the layout of ToolRL's tables and writes JSON with --output.

With ``--endpoint http://HOST:PORT/v1 --model NAME`` the answers come from a model served
through an OpenAI-compatible chat-completions API instead (``toolrl_jax.eval.endpoint``); the
scoring is the same.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="alias, local dir, .gguf or hub id (default smollm2-135m); "
                        "with --endpoint, the served model's name")
    parser.add_argument("--benchmark", required=True,
                        help="bfcl | apibank | toolrl | generated | envs | math")
    parser.add_argument("--categories", default=None,
                        help="BFCL categories or groups, comma separated (default: non-live + live AST, relevance)")
    parser.add_argument("--data", nargs="*", default=None, help="data file(s) for apibank / toolrl")
    parser.add_argument("--limit", type=_positive_int, default=None,
                        help="at most N tasks per category/file (N >= 1)")
    parser.add_argument("--output", default=None, help="write JSON results here")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="decode slots")
    parser.add_argument("--prompt-style", default="toolrl", help="toolrl | json_schema | compact")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--max-prompt-tokens", type=int, default=4096)
    parser.add_argument("--max-turns", type=int, default=4, help="assistant turns per episode (envs)")
    parser.add_argument("--samples", type=int, default=1,
                        help="math: answers per problem (pass@1 = their mean; > 1 samples at temperature 1)")
    served = parser.add_argument_group("served model (OpenAI-compatible chat-completions endpoint)")
    served.add_argument("--endpoint", default=None,
                        help="score a model served at this API root, e.g. http://HOST:PORT/v1 (vLLM, SGLang)")
    served.add_argument("--api-key", default=None, help="bearer token (default: $OPENAI_API_KEY)")
    served.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    served.add_argument("--retries", type=int, default=3, help="retries of a failed request")
    served.add_argument("--concurrency", type=int, default=8, help="requests in flight")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--limit -1`` used to evaluate nothing and exit 0)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def endpoint_predict(args):
    """``predict_fn`` asking the ``--endpoint`` server (see ``toolrl_jax.eval.endpoint``)."""
    import os

    from toolrl_jax.errors import ConfigError
    from toolrl_jax.eval.endpoint import EndpointConfig, endpoint_predict_fn

    if args.model is None:
        raise ConfigError("--endpoint needs --model NAME (the served model's name)")
    api_key = args.api_key if args.api_key is not None else os.environ.get("OPENAI_API_KEY", "")
    return endpoint_predict_fn(EndpointConfig(
        base_url=args.endpoint, model=args.model, api_key=api_key,
        max_tokens=args.max_new_tokens, timeout_s=args.timeout, max_retries=args.retries,
        concurrency=args.concurrency))


def local_predict(args):
    """``predict_fn`` of the local ``--model`` (greedy, the rollout engine)."""
    from toolrl_jax.chat import detect_template, load_tokenizer
    from toolrl_jax.models.registry import DEFAULT_MODEL, load_model

    loaded = load_model(args.model or DEFAULT_MODEL, dtype=args.dtype)
    tokenizer = load_tokenizer(loaded.source.tokenizer_source)
    template = detect_template(tokenizer)
    from toolrl_jax.eval.predict import make_predict_fn

    return make_predict_fn(loaded.model, tokenizer, template,
                           max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                           max_prompt_tokens=args.max_prompt_tokens)


def envs_eval(args) -> int:
    """Multi-turn evaluation on a built FTRL environment directory (``--benchmark envs``)."""
    from toolrl_jax.chat import detect_template, load_tokenizer
    from toolrl_jax.envgen.evaluation import run_envs_eval
    from toolrl_jax.models.registry import DEFAULT_MODEL, load_model

    loaded = load_model(args.model or DEFAULT_MODEL, dtype=args.dtype)
    tokenizer = load_tokenizer(loaded.source.tokenizer_source)
    return run_envs_eval(args, loaded.model, tokenizer, detect_template(tokenizer))


def math_eval(args) -> int:
    """ReTool math evaluation with the code interpreter in the loop (``--benchmark math``)."""
    from toolrl_jax.chat import detect_template, load_tokenizer
    from toolrl_jax.models.registry import DEFAULT_MODEL, load_model

    loaded = load_model(args.model or DEFAULT_MODEL, dtype=args.dtype)
    tokenizer = load_tokenizer(loaded.source.tokenizer_source)
    return _run_math(args, loaded.model, tokenizer, detect_template(tokenizer))


def run(args) -> int:
    from toolrl_jax.eval.run import report_and_save, run_benchmark
    from toolrl_jax.models.registry import DEFAULT_MODEL

    if args.benchmark == "envs":
        return envs_eval(args)
    if args.benchmark == "math":  # ReTool: multi-turn with the code interpreter
        return math_eval(args)
    predict = endpoint_predict(args) if args.endpoint else local_predict(args)
    data = args.data[0] if args.data and len(args.data) == 1 else args.data
    bar = _ProgressBar()
    try:
        results = run_benchmark(args.benchmark, predict, categories=args.categories, data=data,
                                limit=args.limit, prompt_style=args.prompt_style,
                                batch_size=max(args.batch_size * 8, 64), progress=bar)
    finally:
        bar.close()
    report_and_save(results, str(args.model or DEFAULT_MODEL), args.output)
    return 0


def _run_math(args, model, tokenizer, template) -> int:
    from toolrl_jax.eval.math import (evaluate_math, make_math_generate_fn, math_eval_tasks,
                                      print_math_report)

    tasks = math_eval_tasks(args.data[0] if args.data else None, args.limit)
    generate = make_math_generate_fn(model, tokenizer, template, max_new_tokens=args.max_new_tokens,
                                     batch_size=args.batch_size, max_prompt_tokens=args.max_prompt_tokens,
                                     temperature=0.0 if args.samples == 1 else 1.0)
    results = evaluate_math(generate, tasks, samples=args.samples)
    print_math_report(results, str(args.model or "smollm2-135m"), output=args.output)
    return 0


class _ProgressBar:
    """``progress(done, total)`` callback as a tqdm bar (one bar per category / file)."""

    def __init__(self):
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None or self._bar.total != total or done < self._bar.n:
            self.close()
            self._bar = tqdm(total=total, desc="eval", file=sys.stderr, dynamic_ncols=True)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
