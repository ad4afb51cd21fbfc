"""A model family is one package (``zoo/models/<family>/``): the generic code names no family, each family's model,
parts, side streams and converter are registered from its own package, and the names that moved still resolve."""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest

import zoo
from zoo._builtins import BUILTINS

ROOT = Path(zoo.__file__).resolve().parent
FAMILIES = sorted(p.name for p in (ROOT / "models").iterdir() if (p / "__init__.py").is_file())
# the families' names as code and prose spell them: package names and the papers' spellings
FAMILY_WORDS = re.compile("|".join([*FAMILIES, r"x²-vlm", r"ep-alm", r"multimodal-gpt", r"flamingo"]), re.IGNORECASE)


def _generic_files() -> list[Path]:
    """Every module outside the family packages, but the table of built-in registry rows (a family's rows name its
    package's modules: the one generic line a built-in family adds)."""
    family_dirs = [ROOT / "models" / f for f in FAMILIES]
    return [p for p in sorted(ROOT.rglob("*.py"))
            if not any(d in p.parents for d in family_dirs) and p != ROOT / "_builtins.py"]


def _prose_lines(tree: ast.AST) -> set[int]:
    """Lines of the strings that are documentation: docstrings, other bare string statements and strings assigned
    to ``__doc__`` or to a ``*_DOC`` name."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        value = None
        if isinstance(node, ast.Expr) or isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and (t.id == "__doc__" or t.id.endswith("_DOC")) for t in node.targets):
            value = node.value
        if value is None:
            continue
        for sub in ast.walk(value):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                lines.update(range(sub.lineno, sub.end_lineno + 1))
    return lines


def family_names_in_code(path: Path) -> list[tuple[int, str]]:
    """``(line, token)`` of every identifier or string (not documentation, not a comment) naming a family."""
    source = path.read_text(encoding="utf-8")
    prose = _prose_lines(ast.parse(source))
    hits = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.NAME, tokenize.STRING) or not FAMILY_WORDS.search(tok.string):
            continue
        if tok.type == tokenize.STRING and tok.start[0] in prose:
            continue
        hits.append((tok.start[0], tok.string))
    return hits


def test_the_family_list_is_the_packages():
    assert FAMILIES == ["cclm", "davinci", "epalm", "mmgpt", "univl", "x2vlm"]


def test_generic_code_names_no_family():
    """The framework asks a model what it declares (tasks, heads, side streams, converter, parameter parts) and never
    branches on which family it is: no identifier or message string in the generic modules names one."""
    found = {str(p.relative_to(ROOT.parent)): hits for p in _generic_files() if (hits := family_names_in_code(p))}
    assert found == {}


def test_the_scan_sees_code_and_skips_prose(tmp_path):
    """What the scan above would catch: a family's class, module or name in code or in a message; not its mention
    in documentation or comments."""
    src = tmp_path / "m.py"
    src.write_text('"""Follows the official X²-VLM code."""\n'
                   "from zoo.models.cclm import CCLM  # CCLM\n"
                   "_PAIR_DOC = 'as DaVinci reads it'\n"
                   "def f(model):\n"
                   "    '''eP-ALM's prompt.'''\n"
                   "    if isinstance(model, CCLM):\n"
                   "        raise ValueError('needs a MultiModal-GPT model')\n"
                   "    return 'plain'\n")
    assert family_names_in_code(src) == [(2, "cclm"), (2, "CCLM"), (6, "CCLM"), (7, "'needs a MultiModal-GPT model'")]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_registers_from_its_own_package(family):
    """Every built-in row that names a module of the family's package is registered by that module, and the
    family's model is among them; its converter, if it has one, lives in the package's ``convert`` module."""
    prefix = f"zoo.models.{family}."
    rows = [(kind, name, module) for kind, table in BUILTINS.items() for name, module in table.items()
            if module.startswith(prefix)]
    assert ("model", family, f"{prefix}model") in rows
    for kind, name, module in rows:
        obj = zoo.REGISTRIES[kind].get(name)
        assert obj.__module__ == module, (kind, name)
    assert (ROOT / "models" / family / "convert.py").is_file()
    converter = zoo.MODELS.get(family).official_converter
    if converter is not None:  # mmzoo convert FAMILY: declared by the family's own model class
        assert converter.__module__ == f"{prefix}model"


def test_side_streams_are_declared_by_their_families():
    """``data.parallel`` and ``data.language`` are registered side streams of the families whose losses read them;
    the data section's keys come from the registry."""
    from zoo.data.side import side_stream
    from zoo.train.data import data_keys

    assert zoo.SIDE_STREAMS.names() == ["language", "parallel"]
    parallel, language = side_stream("parallel"), side_stream("language")
    assert parallel.__module__ == "zoo.models.cclm.data" and parallel.loss_method == "parallel_text_losses"
    assert language.__module__ == "zoo.models.mmgpt.instruction" and language.loss_method == "language_losses"
    assert hasattr(zoo.MODELS.get("cclm"), "parallel_text_losses")
    assert hasattr(zoo.MODELS.get("mmgpt"), "language_losses")
    keys = data_keys()
    assert {k: keys[k] for k in ("parallel", "parallel_weight", "parallel_batch_size")} == {
        "parallel": "a file or a list of files or null", "parallel_weight": "a number or null",
        "parallel_batch_size": "an integer >= 1 or null"}


@pytest.mark.parametrize(("old", "name", "new"), [
    ("zoo.train.data", "read_parallel", "zoo.models.cclm.data"),
    ("zoo.train.data", "read_instructions", "zoo.models.mmgpt.instruction"),
    ("zoo.data.collate", "ParallelTextCollator", "zoo.models.cclm.data"),
    ("zoo.models.x2vlm", "convert_official_state_dict", "zoo.models.x2vlm.convert"),
    ("zoo.models.cclm", "convert_official_checkpoint", "zoo.models.cclm.convert"),
    ("zoo.models.davinci", "DaVinciEncoder", "zoo.models.davinci.model"),
])
def test_moved_names_still_resolve(old, name, new):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_the_old_side_stream_table_is_the_registry():
    from zoo.train import data

    assert data.SIDE_STREAMS is zoo.SIDE_STREAMS
    with pytest.raises(AttributeError, match="has no attribute 'read_nothing'"):
        data.read_nothing  # noqa: B018


@pytest.mark.parametrize("family", FAMILIES)
def test_the_declared_tokenizer_part_is_the_models_text_part(family):
    """``tokenizer_part`` names the config part the model reads text with (``model.text``, the language model for
    the LM families): what an export writes under ``tokenizer/`` and points back at."""
    model = zoo.create_model(f"{family}-tiny", device="meta")
    key = type(model).tokenizer_part
    assert getattr(model, key) is model.text
    assert key in model.zoo_config["model"]
