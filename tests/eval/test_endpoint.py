"""`eval --endpoint`: a scripted model behind a chat-completions server on 127.0.0.1 gets the
same scores as local evaluation given the same completions; retries are bounded; errors are
one line."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from toolrl_jax.cli import main
from toolrl_jax.eval.endpoint import (
    EndpointConfig,
    EndpointError,
    chat_completion,
    completion_text,
    endpoint_predict_fn,
    wire_messages,
)
from toolrl_jax.eval.run import run_benchmark

WRONG = "<think> no tool fits </think>\n<response> I cannot help. </response>"


def _key(messages) -> str:
    return json.dumps(wire_messages(messages), sort_keys=True)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out closes the socket: expected here


class ScriptedServer:
    """A chat-completions server whose model answers from ``replies[messages]``; ``faults``
    is a list of HTTP statuses (or "sleep") served before the scripted reply."""

    def __init__(self, replies=None, faults=(), sleep_s=0.0):
        self.replies = dict(replies or {})
        self.faults = list(faults)
        self.sleep_s = sleep_s
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, payload):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    fault = server.faults.pop(0) if server.faults else None
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "no such route"}})
                if fault == "sleep":
                    time.sleep(server.sleep_s)
                elif fault is not None:
                    return self._send(fault, {"error": {"message": f"scripted {fault}"}})
                reply = server.replies.get(_key(body["messages"]), {"content": WRONG})
                self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", **reply}}]})

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _scripted_reply(i: int, task) -> dict:
    """Task i: the ground truth as text, a wrong answer, or the ground-truth calls as native
    OpenAI tool_calls (content null)."""
    if i % 3 == 0:
        return {"content": task.ground_truth}
    if i % 3 == 1:
        return {"content": WRONG}
    calls = [{"id": f"c{j}", "type": "function",
              "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
             for j, c in enumerate(task.ground_truth_calls)]
    return {"content": None, "tool_calls": calls}


def _recording_local_predict(replies: dict):
    """Local predict_fn that scripts each task's reply, remembers it for the server, and answers
    with the text the endpoint client would extract from it."""
    seen = [0]

    def predict(tasks):
        outs = []
        for task in tasks:
            reply = _scripted_reply(seen[0], task)
            seen[0] += 1
            replies[_key(task.messages)] = reply
            replies.setdefault("__tasks__", []).append(task)
            outs.append(completion_text({"choices": [{"message": reply}]}))
        return outs

    return predict


def _apibank_file(tmp_path):
    cases = [{"system": "You can call tools.", "user": f"request {i}",
              "answer": [{"name": f"Tool{i % 2}", "parameters": {"x": str(i), "y": "b"}}]}
             for i in range(6)]
    path = tmp_path / "level-1-mine.json"
    path.write_text(json.dumps(cases))
    return path


BENCHMARKS = [("generated", {"limit": 9, "seed": 3}), ("apibank", {})]
if importlib.util.find_spec("bfcl_eval") is not None:
    BENCHMARKS.append(("bfcl", {"categories": ["simple", "multiple"], "limit": 3}))


@pytest.mark.parametrize("benchmark,kwargs", BENCHMARKS, ids=[b for b, _ in BENCHMARKS])
def test_endpoint_scores_equal_local_scores(tmp_path, benchmark, kwargs):
    if benchmark == "apibank":
        kwargs = {"data": _apibank_file(tmp_path)}
    replies: dict = {}
    local = run_benchmark(benchmark, _recording_local_predict(replies), batch_size=4, **kwargs)
    with ScriptedServer(replies) as server:
        config = EndpointConfig(base_url=server.url, model="scripted", api_key="k", concurrency=3,
                                max_tokens=77)
        remote = run_benchmark(benchmark, endpoint_predict_fn(config), batch_size=4, **kwargs)
    assert json.dumps(remote, sort_keys=True, default=str) == json.dumps(local, sort_keys=True, default=str)
    assert len(server.requests) == len(replies) - 1
    body = server.requests[0]
    assert (body["model"], body["max_tokens"], body["temperature"], body["n"]) == ("scripted", 77, 0.0, 1)
    assert server.headers[0]["Authorization"] == "Bearer k"
    # ground truth as text and as native tool_calls both score correct, the wrong third not
    tasks = replies.pop("__tasks__")
    n = len(tasks)  # a wrong text answer still matches a task whose answer has no call
    want = sum(1 for i, t in enumerate(tasks) if i % 3 != 1 or not t.ground_truth_calls)
    if benchmark == "apibank":
        assert remote["overall"]["correct"] == want
    if benchmark == "generated":
        assert round(remote["exact_match"] * n) == want


def test_cli_eval_endpoint_writes_the_local_results(tmp_path, capsys):
    replies: dict = {}
    local = run_benchmark("generated", _recording_local_predict(replies), limit=5, seed=0)
    replies.pop("__tasks__")
    with ScriptedServer(replies) as server:
        out = tmp_path / "res.json"
        assert main(["eval", "--endpoint", server.url, "--model", "scripted", "--benchmark",
                     "generated", "--limit", "5", "--output", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["model"] == "scripted"
    assert json.dumps({k: v for k, v in saved.items() if k != "model"}, sort_keys=True) == \
        json.dumps(json.loads(json.dumps(local, default=str)), sort_keys=True)


def test_retryable_statuses_are_retried_then_answered():
    with ScriptedServer(faults=[503, 429]) as server:
        config = EndpointConfig(base_url=server.url, model="m", max_retries=2, backoff_s=0.01)
        assert chat_completion(config, [{"role": "user", "content": "hi"}]) == WRONG
    assert len(server.requests) == 3


def test_retries_are_bounded_and_the_error_is_one_line():
    with ScriptedServer(faults=[500] * 10) as server:
        config = EndpointConfig(base_url=server.url, model="m", max_retries=2, backoff_s=0.01)
        with pytest.raises(EndpointError) as e:
            chat_completion(config, [{"role": "user", "content": "hi"}])
    assert len(server.requests) == 3
    assert "HTTP 500" in str(e.value) and "3 attempt" in str(e.value) and "\n" not in str(e.value)


def test_client_errors_are_not_retried():
    with ScriptedServer() as server:
        config = EndpointConfig(base_url=server.url + "/extra", model="m", max_retries=3,
                                backoff_s=0.01)
        with pytest.raises(EndpointError, match="HTTP 404"):
            chat_completion(config, [{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1


def test_timeout_is_retried_then_reported():
    with ScriptedServer(faults=["sleep"] * 5, sleep_s=1.0) as server:
        config = EndpointConfig(base_url=server.url, model="m", timeout_s=0.2, max_retries=1,
                                backoff_s=0.01)
        t0 = time.monotonic()
        with pytest.raises(EndpointError, match="2 attempt"):
            chat_completion(config, [{"role": "user", "content": "hi"}])
        assert time.monotonic() - t0 < 1.5
    assert len(server.requests) == 2


def test_cli_unreachable_endpoint_and_bad_url_are_one_line(capsys):
    server = ScriptedServer()  # bound, never served, then closed: the port refuses
    url = server.url
    server.httpd.server_close()
    assert main(["eval", "--endpoint", url, "--model", "m", "--benchmark", "generated",
                 "--limit", "2", "--retries", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is the server running" in err and "\n" not in err
    assert main(["eval", "--endpoint", "localhost:8000", "--model", "m", "--benchmark",
                 "generated"]) == 2
    assert "http(s) URL" in capsys.readouterr().err
    assert main(["eval", "--endpoint", url, "--benchmark", "generated"]) == 2
    assert "--model NAME" in capsys.readouterr().err


def test_completion_text_of_tool_calls_and_bad_replies():
    reply = {"choices": [{"message": {"content": "<think> t </think>", "tool_calls": [
        {"function": {"name": "A", "arguments": '{"x": 1}'}},
        {"function": {"name": "B", "arguments": "not json"}}]}}]}
    assert completion_text(reply) == (
        '<think> t </think>\n<tool_call>\n{"name": "A", "parameters": {"x": 1}}\n'
        '{"name": "B", "parameters": "not json"}\n</tool_call>')
    for bad in ({}, {"choices": []}, [1], {"choices": [{"text": "x"}]}):
        with pytest.raises(EndpointError, match="not a chat completion"):
            completion_text(bad)
