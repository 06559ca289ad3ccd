import importlib

from otclust.methods import METHOD_MODULES, available_methods


def test_available_methods_does_not_rely_on_importlib_util_being_imported_elsewhere(monkeypatch):
    # `import importlib` alone does not load importlib.util; the registry must import what it uses
    # instead of finding it there because torch happened to import it first.
    monkeypatch.delattr(importlib, "util", raising=False)
    assert available_methods() == list(METHOD_MODULES)
