"""What a task is: the unit that ``mmzoo train``, ``mmzoo eval`` and ``mmzoo predict`` iterate over.

A :class:`Task` declares everything generic code needs to know about one kind of fine-tuning job, so that no task
table or task if-chain lives in the Lightning module, the data module or the CLI:

- ``protocol``: a :class:`typing.Protocol` naming the model methods the task calls (its loss method and its
  prediction methods); a model lacking one cannot be trained on the task.
- ``readers``: the dataset registry names (:data:`zoo.registry.DATASETS`) of its training and evaluation records,
  in the official formats.
- ``data_defaults``: values of the ``data:`` section that differ from the general defaults for this task.
- ``id_key``: the key of a prediction output that identifies a sample (distributed evaluation keeps each once).
- ``progress_metrics``: the metrics shown in the progress bar.
- :meth:`collator`, :meth:`predict_batch`, :meth:`compute_metrics`: how a batch is built, predicted and scored.

What a *model* can do is declared by the model: ``task_heads`` (a class attribute of
:class:`zoo.models.base.ZooModel`) maps each task the family implements to the head attributes it needs built.
:func:`task_problem` combines the two: a model supports a task when it has the protocol's methods, declares the task
and holds every head the declaration names (so a model built for another task is told apart from a family that has
no such task at all).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from zoo.train.data import TaskDataModule
    from zoo.train.module import TaskModule

__all__ = ["Task", "config_problem", "protocol_methods", "task_problem"]


def protocol_methods(protocol: type) -> tuple[str, ...]:
    """The method names a :class:`typing.Protocol` declares (its own and its protocol bases'), in definition order."""
    names: list[str] = []
    for klass in reversed(protocol.__mro__):
        if klass is object or not getattr(klass, "_is_protocol", False):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_") and callable(value) and name not in names:
                names.append(name)
    return tuple(names)


class Task:
    """One task (see the module docstring). Subclasses set the class attributes and override the three methods;
    register with ``@zoo.register_task("name")``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    protocol: ClassVar[type]
    loss_method: ClassVar[str]
    readers: ClassVar[tuple[str, str]]
    data_defaults: ClassVar[Mapping[str, Any]] = {}
    id_key: ClassVar[str] = "index"
    progress_metrics: ClassVar[tuple[str, ...]] = ()
    #: whether retrieval-style training items may carry a translated caption (``data.translation``)
    reads_translations: ClassVar[bool] = False

    # -- the model -----------------------------------------------------------------------------------------------
    def problem(self, model: Any) -> tuple[str, str] | None:
        """Why ``model`` cannot be trained on this task, as ``(key to change, what is missing)``, or None."""
        return task_problem(model, self)

    def config_problem(self, tree: Mapping[str, Any]) -> tuple[str, str] | None:
        """:meth:`problem` of the model a resolved config tree would build, before it is built."""
        return config_problem(tree, self)

    def check_model(self, model: Any, datamodule: TaskDataModule, file: str | None = None) -> None:
        """A problem of this model with this data that the config can fix, raised as a ConfigError before anything
        runs (default: none)."""

    def prepare_model(self, model: Any, dm: TaskDataModule, file: str | None = None) -> None:
        """What the task sets on the model from the checked data before training (default: nothing); e.g. VQA: the
        classifier's answer labels, or the answer list a generative head ranks, into the model's config so that
        checkpoints and exports carry them."""

    # -- data ----------------------------------------------------------------------------------------------------
    def check_data(self, cfg: Mapping[str, Any], vqa_mode: str) -> None:
        """Checks of the resolved ``data:`` section that only this task makes (default: none)."""

    def collator(self, dm: TaskDataModule, split: str) -> Callable:
        raise NotImplementedError

    def class_names(self, dm: TaskDataModule) -> list[str] | None:
        """The classes of a classification task in the model's order (None for other tasks)."""
        return None

    # -- evaluation ----------------------------------------------------------------------------------------------
    def predict_batch(self, module: TaskModule, batch: Mapping[str, Any]) -> dict:
        raise NotImplementedError

    def compute_metrics(self, module: TaskModule, outputs: list[dict], name: str | None = None) -> dict[str, float]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<task {self.name!r}: {self.description}>"


def task_problem(model: Any, task: Task) -> tuple[str, str] | None:
    """Why ``model`` cannot be trained on ``task``: ``("task", ...)`` when the family lacks a method of the task's
    protocol or does not declare the task in its ``task_heads``; ``("model.task", ...)`` when it declares it but was
    built without a head the declaration names (built for another task); None when it can."""
    return _problem(model, task, lambda head: getattr(model, head, None) is not None)


def config_problem(tree: Mapping[str, Any], task: Task) -> tuple[str, str] | None:
    """:func:`task_problem` of the model a resolved config tree (``{type: NAME, ...}``) would build, told from the
    tree alone, before anything is built: a head is built when the tree gives it a value other than null or false
    (or, left out, its constructor's default does)."""
    import inspect  # noqa: PLC0415

    from zoo.registry import MODELS  # noqa: PLC0415

    cls = MODELS.get(tree["type"])
    params = inspect.signature(cls).parameters

    def built(head: str) -> bool:
        if head in tree:
            value = tree[head]
        else:
            default = params[head].default if head in params else None
            value = None if default is inspect.Parameter.empty else default
        return value is not None and value is not False

    return _problem(cls, task, built)


def _problem(model: Any, task: Task, built: Callable[[str], bool]) -> tuple[str, str] | None:
    missing = [m for m in protocol_methods(task.protocol) if not callable(getattr(model, m, None))]
    if missing:
        return "task", (f"has no {', '.join(m + '()' for m in missing)}: it cannot be trained on task "
                        f"{task.name!r}")
    declared = getattr(model, "task_heads", None) or {}
    if task.name not in declared:
        known = ", ".join(declared) or "none"
        return "task", f"does not declare task {task.name!r} (its task_heads: {known})"
    absent = [head for head in declared[task.name] if not built(head)]
    if absent:
        return "model.task", f"has no {task.name} head ({', '.join(absent)} not built)"
    return None
