"""ReTool: code interpreter, math data, cold start, rewards, evaluation."""
