"""Every task `sphinx-x eval --task` knows, and the groups that name several at once."""

from . import demo_tasks, multiple_choice, referring, short_answer, yes_no
from .task import Task


TASKS: dict[str, Task] = {
    task.name: task
    for family in (multiple_choice, short_answer, yes_no, referring, demo_tasks)
    for task in family.TASKS
}
GROUPS = {
    "demo": [task.name for task in demo_tasks.TASKS],
    **{prefix: [name for name in TASKS if name.startswith(f"{prefix}_")] for prefix in ("refcoco", "refcoco+",
                                                                                          "refcocog")},
}


def resolve_tasks(names: str) -> list[Task]:
    """`"mme,demo"` -> the tasks, groups expanded, in order, each once."""
    resolved = []
    for name in (part.strip() for part in names.split(",") if part.strip()):
        if name not in TASKS and name not in GROUPS:
            raise ValueError(f"unknown task {name!r}; choose from {', '.join([*TASKS, *GROUPS])}.")
        resolved += [TASKS[member] for member in GROUPS.get(name, [name]) if TASKS[member] not in resolved]
    if not resolved:
        raise ValueError("--task names no task; e.g. --task mme,pope or --task demo.")
    return resolved
