"""`eval` input checks (issue 10, item 8): --limit must be positive, an API-Bank run on a file of
another format is a clear error instead of "Overall 0.00"."""

import json

import pytest

from toolrl_jax.cli import main
from toolrl_jax.errors import DataError
from toolrl_jax.eval.apibank import evaluate_apibank
from toolrl_jax.eval.run import run_benchmark


@pytest.mark.parametrize("limit", ["-1", "0", "x"])
def test_eval_limit_must_be_positive(limit, capsys):
    with pytest.raises(SystemExit) as info:  # refused by the argument parser, no model loaded
        main(["eval", "--benchmark", "apibank", "--data", "a.json", "--limit", limit])
    assert info.value.code == 2
    assert "--limit" in capsys.readouterr().err


def _predict(tasks):
    return ["<think> a </think>\n<response> b </response>"] * len(tasks)


@pytest.mark.parametrize("content", [
    "\n".join(json.dumps({"id": f"simple_{i}", "question": [[{"role": "user", "content": "q"}]],
                          "function": []}) for i in range(3)),  # BFCL JSONL
    json.dumps([{"prompt": "p", "completion": "c"}]),  # some other JSON list
    json.dumps({"data": [1, 2, 3]}),
])
def test_apibank_on_another_format_is_a_data_error(tmp_path, content):
    path = tmp_path / "level-1-other.json"
    path.write_text(content)
    with pytest.raises(DataError, match="no API-Bank case") as info:
        evaluate_apibank(_predict, path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(DataError, match="processed API-Bank JSON"):
        run_benchmark("apibank", _predict, data=str(path))


def test_apibank_file_with_some_bad_records_still_runs(tmp_path):
    path = tmp_path / "level-1-mixed.json"
    path.write_text(json.dumps([{"system": "s", "user": "u", "answer": {"name": "A", "parameters": {}}},
                                {"bad": True}]))
    result = evaluate_apibank(_predict, path)
    assert result["overall"]["total"] == 1 and result["skipped"] == {str(path): {"missing_system_or_user": 1}}
