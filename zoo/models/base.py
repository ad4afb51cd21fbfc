"""What every assembled model shares: its resolved config, export, parameter accounting."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

__all__ = ["CLIP_PREPROCESS", "PARAM_PARTS", "ZooModel", "compile_parts", "count_parameters",
           "enable_grad_checkpointing", "generic_param_part", "input_resolution"]

#: the parts a parameter belongs to for the optimiser (:func:`zoo.train.optim.param_groups`): each has its own learning
#: rate (``optim.vision_lr``, ``text_lr``, ``fusion_lr``; ``other`` takes ``optim.lr``)
PARAM_PARTS = ("vision", "text", "fusion", "other")

#: CLIP's normalisation with a square bicubic resize: the official recipe of the families trained from CLIP-style
#: data pipelines (X²-VLM ``dataset/__init__.py``, CCLM, DaVinci ``dataset/__init__.py``, eP-ALM), which declare it
#: as their ``preprocess_defaults``
CLIP_PREPROCESS: Mapping[str, Any] = {"mean": (0.48145466, 0.4578275, 0.40821073),
                                      "std": (0.26862954, 0.26130258, 0.27577711),
                                      "interpolation": "bicubic", "resize_mode": "squash"}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (a tied tensor counts once), as the official reference counts do."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def input_resolution(model: nn.Module) -> int | None:
    """The image side a model takes: its vision part's ``image_size``, else its config's ``default_resolution``."""
    size = getattr(getattr(model, "vision", None), "image_size", None)
    return size or (getattr(model, "zoo_config", None) or {}).get("default_resolution")


def enable_grad_checkpointing(model: nn.Module) -> list[str]:
    """Recompute the layers of the model's encoders in backward (``train.grad_checkpointing``): every top-level part
    among ``vision``, ``text``, ``fusion`` that has ``set_grad_checkpointing``. Returns the parts switched on."""
    done = []
    for name in ("vision", "text", "fusion"):
        part = getattr(model, name, None)
        if part is not None and hasattr(part, "set_grad_checkpointing"):
            part.set_grad_checkpointing(True)
            done.append(name)
    return done


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_parts(model: nn.Module, parts: Sequence[str] | None = None, *, mode: str | None = None,
                  dynamic: bool | None = None) -> list[str]:
    """Compile the model's top-level parts in place with ``torch.compile`` (inductor; ``train.compile``): each of
    ``parts`` (default: those of ``vision``, ``text``, ``fusion`` the model has) gets ``nn.Module.compile``, so
    parameter names, checkpoints and exports stay those of the eager model, and a part that falls back to eager for
    an operation compiles the rest. The inductor cache goes to ``$MMZOO_HOME/compile-cache`` unless
    ``TORCHINDUCTOR_CACHE_DIR`` names another folder (inductor's own default, which it writes into the environment
    when first asked, does not count): a second run of the same model and shapes reuses the compiled kernels.
    Returns the parts compiled; a name the model lacks raises a ConfigError."""
    from zoo.spec import ConfigError  # noqa: PLC0415

    if mode is not None and mode not in COMPILE_MODES:
        raise ConfigError(f"expected one of {', '.join(COMPILE_MODES)}, got {mode!r}", "train.compile.mode")
    names = list(parts) if parts is not None else [n for n in ("vision", "text", "fusion")
                                                       if isinstance(getattr(model, n, None), nn.Module)]
    have = [n for n, _ in model.named_children()]
    for name in names:
        if not isinstance(getattr(model, name, None), nn.Module):
            raise ConfigError(f"the model has no part {name!r} to compile; its parts: {', '.join(have)}",
                              "train.compile")
    if not _user_inductor_cache():
        from zoo.hub import mmzoo_home  # noqa: PLC0415

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(mmzoo_home() / "compile-cache")
    options = {k: v for k, v in (("mode", mode), ("dynamic", dynamic)) if v is not None}
    for name in names:
        getattr(model, name).compile(**options)
    return names


def _user_inductor_cache() -> bool:
    """Whether ``TORCHINDUCTOR_CACHE_DIR`` names a folder of the user's choosing: set, and not inductor's default,
    which inductor writes into the environment the first time anything asks it for its cache folder."""
    value = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not value:
        return False
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # noqa: PLC0415

    return os.path.abspath(value) != os.path.abspath(default_cache_dir())


def generic_param_part(name: str) -> str:
    """The part of a parameter by its top-level module: ``vision.*``, ``text.*``, ``fusion.*``; anything else (heads,
    projections, temperatures) is ``other``."""
    head = name.split(".", 1)[0] if "." in name else None
    return head if head in ("vision", "text", "fusion") else "other"


class ZooModel(nn.Module):
    """Base class of registered models. :func:`zoo.create_model` fills ``zoo_config`` with the resolved config.

    What a family declares here, for the generic code to ask instead of knowing the family:

    - ``task_heads`` / :meth:`supported_tasks`: the tasks it implements and the heads each needs;
    - :meth:`param_part`: which part (``vision``, ``text``, ``fusion``, ``other``) a parameter belongs to, for the
      per-part learning rates of the optimiser; by default the top-level module's name, overridden where the layout
      says more (X²-VLM's one text stack whose last layers are fusion layers);
    - ``official_converter``: the function turning an official checkpoint of the family into an export, found by
      ``mmzoo convert FAMILY`` (and listed by ``mmzoo convert --list``) through the model registry;
    - ``official_train_step``: the official code's training step, timed beside this model's by ``mmzoo bench train
      --official`` after an equality check;
    - ``tokenizer_part``: the part whose tokenizer the model reads text with, and ``tokenizer_fields`` /
      :meth:`tokenizer_settings`: the config values that follow a data-built tokenizer (vocabulary rows, special ids);
    - ``preprocess_defaults`` / :meth:`processor`: its image preprocessing (the official recipe) and how its batches
      are built (:mod:`zoo.processing`).
    """

    zoo_config: dict | None = None
    #: the tasks (:mod:`zoo.tasks`) this family implements → the head attributes each needs built (a model built
    #: for another task lacks them); an empty tuple: the family's own parts serve it. A task not listed here is one
    #: the family cannot do, whatever methods it has.
    task_heads: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: converts an official checkpoint of this family into a loadable export:
    #: ``(checkpoint, out_dir, model=None, task=None) -> dict`` — the official file, the export folder, the registered
    #: model and task variant to build (None: detected from the checkpoint); returns the report ``mmzoo convert``
    #: prints (field → value). The first line of its docstring describes it in ``mmzoo convert --list``. Declare it as
    #: a ``staticmethod``; None: the family has no converter (a subclass inherits its parent's unless it sets None).
    official_converter: ClassVar[Callable[..., dict[str, Any]] | None] = None
    #: the official code's training step, for ``mmzoo bench train NAME --official CHECKOUT --official-python PY``: an
    #: object (a module) with ``run(checkout, python, *, batch, image_size, tokens, steps, threads, save) -> dict``
    #: (the step timed under the official code's own venv; ``save`` writes its initial weights, inputs and outputs)
    #: and ``check(saved, name) -> dict`` (this model's outputs on them, against the official ones); None: none
    official_train_step: ClassVar[Any] = None
    #: the family's official image preprocessing (``mean``, ``std``, ``interpolation``, ``resize_mode``), over the
    #: vision part's own and under the model file's ``preprocess:`` section (:meth:`preprocess_config`)
    preprocess_defaults: ClassVar[Mapping[str, Any]] = {}
    #: the part (a key of the model config) whose tokenizer is the model's: what an export writes under
    #: ``tokenizer/`` and points back at, and what ``text.tokenizer: data`` builds for
    tokenizer_part: ClassVar[str] = "text"
    #: the :class:`zoo.processing.Processor` subclass :meth:`processor` returns (families that build their own
    #: batches set their own)
    processor_class: ClassVar[type | None] = None
    #: model-config paths that follow the tokenizer when it is the data's own (``tokenizer: data``, resolved before
    #: the model is built: :func:`zoo.train.data.prepare_data_tokenizer`) → what of it each takes: ``rows`` (its
    #: length with :meth:`tokenizer_added_tokens`, rounded up to a multiple of 128), ``pad``, ``bos`` or ``eos`` (its
    #: special ids). A path the config's parts do not take (a head it does not build, a classifier head in place of an
    #: answer decoder) is skipped.
    tokenizer_fields: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def config_value(cls, model_cfg: Mapping[str, Any], name: str) -> Any:
        """Argument ``name`` of the model as ``model_cfg`` would build it: the config's value, else the default of
        the class's ``__init__``."""
        import inspect  # noqa: PLC0415

        if name in model_cfg:
            return model_cfg[name]
        return inspect.signature(cls.__init__).parameters[name].default

    @classmethod
    def tokenizer_added_tokens(cls, model_cfg: Mapping[str, Any]) -> list[str]:
        """The tokens a model built from ``model_cfg`` adds to its tokenizer (each needs an embedding row)."""
        return []

    @classmethod
    def tokenizer_template_texts(cls, model_cfg: Mapping[str, Any]) -> list[str]:
        """Text a model built from ``model_cfg`` writes around the data (a prompt template): a tokenizer built from
        the data for it also gets these words."""
        return []

    @classmethod
    def tokenizer_settings(cls, model_cfg: Mapping[str, Any], facts: Mapping[str, int]) -> dict[str, int]:
        """The values of :attr:`tokenizer_fields` for a tokenizer described by ``facts`` (``rows``, ``pad``,
        ``bos``, ``eos``): path → value, for the parts ``model_cfg`` builds."""
        from zoo.spec import accepts  # noqa: PLC0415

        return {path: int(facts[what]) for path, what in cls.tokenizer_fields.items()
                if what in facts and accepts(model_cfg, "model", path)}

    def preprocess_config(self) -> Any:
        """The model's :class:`zoo.processing.PreprocessConfig`: its input resolution and, layered, the vision part's
        ``preprocess_defaults()``, the family's :attr:`preprocess_defaults` and the model file's ``preprocess:``
        section (a model for which none gives a mean and std is a ConfigError naming ``preprocess``)."""
        from zoo.processing import resolve_preprocess  # noqa: PLC0415
        from zoo.spec import ConfigError  # noqa: PLC0415

        cfg = self.zoo_config or {}
        size = input_resolution(self)
        if not size:
            raise ConfigError(f"{cfg.get('name') or type(self).__name__} names no input resolution (vision part "
                              "image_size or default_resolution)", "default_resolution")
        vision = getattr(self, "vision", None)
        part = vision.preprocess_defaults() if callable(getattr(vision, "preprocess_defaults", None)) else None
        return resolve_preprocess(size, [("vision", part), (type(self).__name__, dict(self.preprocess_defaults)),
                                         ("preprocess", cfg.get("preprocess"))], model=cfg.get("name"))

    def processor(self, task: str | None = None) -> Any:
        """What this model takes from data for ``task`` (:class:`zoo.processing.Processor`): the image transform of
        its preprocessing and the collate function of its batches."""
        from zoo.processing import Processor  # noqa: PLC0415

        return (self.processor_class or Processor)(self.preprocess_config(), task)

    def param_part(self, name: str) -> str:
        """The part (one of :data:`PARAM_PARTS`) that the parameter ``name`` (as ``named_parameters`` gives it)
        belongs to; :func:`zoo.train.optim.param_groups` gives each part its learning rate. Default:
        :func:`generic_param_part` (``vision.*``, ``text.*``, ``fusion.*``, else ``other``)."""
        return generic_param_part(name)

    def _require(self, **parts: Any) -> None:
        """A RuntimeError naming the parts (heads) a method needs that this model was built without."""
        missing = [name for name, part in parts.items() if part is None]
        if missing:
            raise RuntimeError(f"this {type(self).__name__} was built without the {', '.join(missing)} part(s) needed "
                               "here; add them in the config (or use the task variant that has them)")

    def supported_tasks(self) -> list[str]:
        """The registered tasks this model, as built, can be trained and evaluated on (its ``task_heads``, the heads
        actually built, and the methods each task's protocol names: :func:`zoo.tasks.supported_tasks`)."""
        from zoo.tasks import supported_tasks  # noqa: PLC0415

        return supported_tasks(self)

    def save_pretrained(self, directory: str | os.PathLike, *, trainable_only: bool = False, tokenizer=None,
                        run: Mapping[str, Any] | None = None) -> Path:
        """Export for :func:`zoo.from_pretrained` (see :func:`zoo.hub.save_pretrained`)."""
        from zoo.hub import save_pretrained  # noqa: PLC0415

        return save_pretrained(self, directory, trainable_only=trainable_only, tokenizer=tokenizer, run=run)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload mmzoo export", trainable_only: bool = False) -> str:
        """Upload the export (config, weights, tokenizer, preprocessing, model card) to a Hugging Face Hub model
        repository, created if needed — what ``huggingface_hub``'s ``ModelHubMixin.push_to_hub`` does (``create_repo``
        then ``upload_folder``), with the export of :meth:`save_pretrained`; load it back with
        ``zoo.from_pretrained("hf-hub:ORG/REPO")``. Returns the commit URL."""
        import tempfile  # noqa: PLC0415

        from huggingface_hub import HfApi  # noqa: PLC0415

        api = HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(Path(tmp) / "export", trainable_only=trainable_only)
            info = api.upload_folder(repo_id=repo.repo_id, folder_path=str(Path(tmp) / "export"),
                                     commit_message=commit_message, repo_type="model")
        return str(info)

    def export_part(self, name: str, directory: str | os.PathLike) -> Path:
        """Write the part ``name`` (``lm``, ``vision``, ...) on its own, in the format its own ``pretrained`` option
        loads (a transformers folder for ``hf_causal_lm``, a timm checkpoint for ``timm``): a part trained here (e.g.
        a language model pre-trained on text) becomes the frozen part of another model. Returns what to set
        ``pretrained`` to."""
        parts = {n: m for n, m in self.named_children()}
        part = parts.get(name)
        if part is None:
            raise ValueError(f"the model ({type(self).__name__}) has no part {name!r}; its parts: {', '.join(parts)}")
        if not hasattr(part, "export_pretrained"):
            raise ValueError(f"part {name!r} ({type(part).__name__}) cannot be exported on its own (it has no "
                             "export_pretrained); export the whole model instead")
        return Path(part.export_pretrained(directory))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return count_parameters(self, trainable_only)
