"""Registry behaviour, lazy imports and the built-in name table."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import zoo
from zoo._builtins import BUILTINS
from zoo.registry import REGISTRIES, Registry, UnknownNameError


def test_register_and_get():
    reg = Registry("widget")

    @reg.register("spinner")
    class Spinner:
        pass

    assert reg.get("spinner") is Spinner
    assert "spinner" in reg.names()
    with pytest.raises(ValueError, match="already registered"):

        @reg.register("spinner")
        class Other:
            pass

    @reg.register("spinner", override=True)
    class Third:
        pass

    assert reg.get("spinner") is Third


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownNameError) as info:
        zoo.VISION_ENCODERS.get("beit2")
    msg = str(info.value)
    assert "unknown vision_encoder 'beit2'" in msg
    assert "did you mean 'beit_v2'" in msg
    assert isinstance(info.value, LookupError)


def test_decorators_exposed_on_package():
    assert zoo.register_vision_encoder.__self__ is zoo.VISION_ENCODERS
    assert zoo.register_head.__self__ is zoo.HEADS
    assert zoo.register_task.__self__ is zoo.TASKS
    assert set(REGISTRIES) == {
        "vision_encoder", "text_encoder", "fusion", "adapter", "language_model", "head", "model", "dataset", "task",
        "side_stream"
    }


@pytest.mark.parametrize("kind", sorted(BUILTINS))
def test_builtin_table_matches_decorators(kind):
    """Every name in the static table is registered by the module the table names, and nothing else is missing."""
    reg = REGISTRIES[kind]
    for name, module in BUILTINS[kind].items():
        importlib.import_module(module)
        obj = reg.get(name)
        assert obj.__module__ == module, f"{kind} {name!r} is defined in {obj.__module__}, table says {module}"
    modules = set(BUILTINS[kind].values())
    registered_here = {n for n, o in reg._entries.items() if getattr(o, "__module__", None) in modules}
    assert registered_here <= set(BUILTINS[kind]), f"names registered but missing from the table: " \
        f"{registered_here - set(BUILTINS[kind])}"


def test_import_zoo_is_lazy():
    """Importing zoo (and listing models) imports neither torch nor any model family."""
    code = (
        "import sys, zoo\n"
        "names = zoo.list_models()\n"
        "assert 'demo-tiny' in names, names\n"
        "heavy = [m for m in ('torch', 'timm', 'transformers', 'open_clip', 'lightning') if m in sys.modules]\n"
        "families = [m for m in sys.modules if m.startswith(('zoo.models.', 'zoo.modules.'))]\n"
        "print(heavy, families)\n"
        "assert not heavy and not families, (heavy, families)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lookup_imports_only_the_defining_module():
    code = (
        "import sys, zoo\n"
        "zoo.HEADS.get('itm')\n"
        "assert 'zoo.heads.matching' in sys.modules\n"
        "assert 'zoo.heads.contrastive' not in sys.modules\n"
        "assert 'timm' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unregister_removes_a_run_time_entry_and_names_an_unknown_one():
    from zoo.registry import Registry

    reg = Registry("thing")

    @reg.register("mine")
    class Mine:
        pass

    assert reg.get("mine") is Mine
    assert reg.unregister("mine") is Mine
    with pytest.raises(UnknownNameError):
        reg.get("mine")
    with pytest.raises(KeyError, match="thing 'mine' is not registered"):
        reg.unregister("mine")
