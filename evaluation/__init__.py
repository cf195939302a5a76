"""`sphinx-x eval`: the SPHINX benchmarks' prompts and metrics, a resumable batched runner, and the lmms-eval model
class (`lmms-eval --model sphinx_x`)."""

from .runner import evaluate, format_table
from .tasks import GROUPS, TASKS, resolve_tasks


__all__ = ["GROUPS", "TASKS", "evaluate", "format_table", "resolve_tasks"]
