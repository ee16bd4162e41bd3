"""Answers from a model served elsewhere, through an OpenAI-compatible chat-completions endpoint.

``endpoint_predict_fn(EndpointConfig(base_url="http://HOST:PORT/v1", model="NAME"))`` is a
``predict_fn(tasks) -> texts`` like the local one in ``toolrl_jax.commands.eval``, so a policy
served by vLLM / SGLang / TGI is scored by exactly the same BFCL / API-Bank / ToolRL code
(``toolrl_jax.eval.run.run_benchmark``).

Wire format (https://platform.openai.com/docs/api-reference/chat/create): one
``POST {base_url}/chat/completions`` per task with ``{"model", "messages", "max_tokens",
"temperature", "n": 1}``; the answer is ``choices[0].message.content``. The task's messages are
sent as they are (the system prompt already lists the tools in the task's prompt style); the
server applies the model's chat template. A reply that carries native ``tool_calls`` instead of
text is turned into ToolRL's ``<tool_call>`` JSON lines so the same parsers score it.

Only the standard library is used (``urllib``). Each request has a timeout; connection errors,
timeouts, HTTP 429 and 5xx are retried at most ``max_retries`` times with exponential back-off;
anything else (404 for a wrong URL, 400 for a wrong model name, a reply that is not a chat
completion) stops the evaluation with one line naming the endpoint and the status.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from toolrl_jax.data.task import ToolTask, render_toolrl_calls
from toolrl_jax.errors import ConfigError, ToolRLError

__all__ = ["EndpointConfig", "EndpointError", "chat_completion", "endpoint_predict_fn",
           "completion_text"]

_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_MAX_REPLY_BYTES = 16 * 1024 * 1024


class EndpointError(ToolRLError):
    """The endpoint could not be reached or did not answer as a chat-completions API."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EndpointConfig:
    """Where and how to ask.

    Attributes:
      base_url: the API root, ``http://HOST:PORT/v1`` (``/chat/completions`` is appended).
      model: the served model's name (``--served-model-name`` of vLLM).
      api_key: sent as ``Authorization: Bearer KEY`` when not empty.
      max_tokens: completion budget per task (the local ``--max-new-tokens``).
      temperature: 0 = greedy, as the local evaluation.
      timeout_s: per request (connect + read).
      max_retries: extra attempts after a retryable failure (so at most ``1 + max_retries``).
      backoff_s: first back-off; doubled after each retry.
      concurrency: requests in flight at once.
    """

    base_url: str
    model: str
    api_key: str = ""
    max_tokens: int = 512
    temperature: float = 0.0
    timeout_s: float = 120.0
    max_retries: int = 3
    backoff_s: float = 1.0
    concurrency: int = 8

    def __post_init__(self):
        url = urllib.parse.urlparse(self.base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(
                f"--endpoint {self.base_url!r}: give an http(s) URL such as http://HOST:PORT/v1")
        if not self.model:
            raise ConfigError("--model: give the served model's name with --endpoint")
        for name in ("timeout_s", "concurrency", "max_tokens"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"endpoint {name}={getattr(self, name)}: use a positive number")
        if self.max_retries < 0 or self.backoff_s < 0:
            raise ConfigError("endpoint max_retries and backoff_s must be >= 0")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


def wire_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Task messages as chat-completions messages: role, string content, and the optional
    ``name`` / ``tool_call_id`` / ``tool_calls`` fields when present."""
    out = []
    for m in messages:
        content = m.get("content", "")
        msg: dict[str, Any] = {
            "role": str(m.get("role", "user")),
            "content": content if isinstance(content, str) else json.dumps(content),
        }
        for key in ("name", "tool_call_id", "tool_calls"):
            if m.get(key):
                msg[key] = m[key]
        out.append(msg)
    return out


def _tool_call_dict(call: Any) -> dict[str, Any]:
    fn = call.get("function", {}) if isinstance(call, Mapping) else {}
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            pass  # kept as text: the scorer sees a malformed call, as it would locally
    return {"name": str(fn.get("name", "")), "arguments": args}


def completion_text(reply: Any) -> str:
    """The answer text of a chat-completions reply (content, or native tool calls rendered as
    ToolRL ``<tool_call>`` JSON lines after any content)."""
    try:
        message = reply["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise EndpointError(
            f"reply is not a chat completion (no choices[0].message): {str(reply)[:200]}") from None
    content = message.get("content") or ""
    calls = message.get("tool_calls") or []
    if not isinstance(content, str):
        content = json.dumps(content)
    if not calls:
        return content
    block = "<tool_call>\n" + render_toolrl_calls([_tool_call_dict(c) for c in calls]) + "\n</tool_call>"
    return f"{content}\n{block}" if content else block


def _post(config: EndpointConfig, body: bytes) -> Any:
    headers = {"Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    request = urllib.request.Request(config.url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
        data = response.read(_MAX_REPLY_BYTES + 1)
    if len(data) > _MAX_REPLY_BYTES:
        raise EndpointError(f"{config.url}: reply larger than {_MAX_REPLY_BYTES} bytes")
    try:
        return json.loads(data)
    except ValueError:
        raise EndpointError(f"{config.url}: reply is not JSON: {data[:200]!r}") from None


def chat_completion(config: EndpointConfig, messages: Sequence[Mapping[str, Any]],
                    *, sleep: Callable[[float], None] = time.sleep) -> str:
    """One chat completion's answer text, with bounded retries (see module docstring)."""
    body = json.dumps({
        "model": config.model,
        "messages": wire_messages(messages),
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "n": 1,
    }).encode()
    delay = config.backoff_s
    for attempt in range(config.max_retries + 1):
        last = attempt == config.max_retries
        try:
            return completion_text(_post(config, body))
        except urllib.error.HTTPError as e:
            detail = e.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
            if e.code not in _RETRY_STATUS or last:
                raise EndpointError(
                    f"{config.url}: HTTP {e.code} {e.reason} after {attempt + 1} attempt(s)"
                    f"{': ' + detail if detail else ''}") from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
            if last:
                reason = getattr(e, "reason", e)
                raise EndpointError(
                    f"{config.url}: {type(e).__name__}: {reason} after {attempt + 1} attempt(s) "
                    f"(timeout {config.timeout_s:g}s); is the server running?") from None
        sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def endpoint_predict_fn(config: EndpointConfig) -> Callable[[Sequence[ToolTask]], list[str]]:
    """``predict_fn(tasks) -> texts`` asking the endpoint, ``config.concurrency`` at a time,
    answers in the order of ``tasks``."""

    def predict(tasks: Sequence[ToolTask]) -> list[str]:
        if not tasks:
            return []
        pool = cf.ThreadPoolExecutor(min(config.concurrency, len(tasks)),
                                     thread_name_prefix="endpoint")
        try:
            futures = [pool.submit(chat_completion, config, task.messages) for task in tasks]
            return [future.result() for future in futures]
        finally:  # on the first error, do not send the requests not yet started
            pool.shutdown(wait=True, cancel_futures=True)

    return predict
