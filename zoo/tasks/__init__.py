"""Tasks as registered units: one file per task (vqa, retrieval, captioning, ve, nlvr, pretrain), each a
:class:`zoo.tasks.base.Task` registered in :data:`zoo.registry.TASKS`. A plug-in package registers its own with
``@zoo.register_task("name")`` and the ``mmzoo.plugins`` entry point, exactly as an encoder (docs/adding-a-task.md).

    >>> from zoo.tasks import get_task, list_tasks
    >>> list_tasks()
    ['captioning', 'nlvr', 'pretrain', 'retrieval', 've', 'vqa']
    >>> get_task("vqa").progress_metrics
    ('vqa_acc',)
"""

from __future__ import annotations

from typing import Any

from zoo.registry import TASKS
from zoo.tasks.base import Task, config_problem, protocol_methods, task_problem

__all__ = ["Task", "config_problem", "get_task", "list_tasks", "protocol_methods", "supported_tasks", "task_problem"]

_instances: dict[str, Task] = {}


def get_task(name: str) -> Task:
    """The registered task ``name`` (one instance per task); an unknown name raises
    :class:`zoo.registry.UnknownNameError` listing the registered tasks with a did-you-mean."""
    cls = TASKS.get(name)
    task = _instances.get(name)
    if task is None or type(task) is not cls:
        task = cls() if isinstance(cls, type) else cls
        if not isinstance(task, Task):
            raise TypeError(f"task {name!r} is registered as {cls!r}, not a zoo.tasks.Task subclass")
        _instances[name] = task
    return task


def list_tasks() -> list[str]:
    """The names of every registered task (built-in and plug-in), sorted."""
    return TASKS.names()


def supported_tasks(model: Any) -> list[str]:
    """The registered tasks ``model`` can be trained and evaluated on: it has each one's protocol methods, declares
    it in ``task_heads`` and holds the heads named there (:func:`zoo.tasks.base.task_problem`)."""
    return [name for name in list_tasks() if get_task(name).problem(model) is None]
