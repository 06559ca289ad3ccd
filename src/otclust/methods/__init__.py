"""Clustering methods, each a `ClusteringMethod` subclass in its own module.

Modules are imported on first use so that one method's optional needs never slow or break
another's start-up.
"""

from __future__ import annotations

import importlib
from importlib.util import find_spec

from otclust.errors import UserError
from otclust.methods.base import ClusteringMethod, InputSpec

METHOD_MODULES = {
    "clot": "otclust.methods.clot",
    "drc": "otclust.methods.drc",
    "ot-kmeans": "otclust.methods.ot_kmeans",
    "soft-kmeans": "otclust.methods.ot_kmeans",
    "ae-kmeans": "otclust.methods.ot_kmeans",
    "sela": "otclust.methods.sela",
    "swav": "otclust.methods.swav",
    "deepcluster": "otclust.methods.deepcluster",
    "deepercluster": "otclust.methods.deepercluster",
    "kmeans": "otclust.methods.kmeans",
}


def available_methods() -> list[str]:
    """Names whose module is present in this installation."""
    names = []
    for name, module in METHOD_MODULES.items():
        if find_spec(module) is not None:
            names.append(name)
    return names


def get_method_class(name: str) -> type[ClusteringMethod]:
    if name not in METHOD_MODULES:
        raise UserError(f"unknown method '{name}': use one of {', '.join(available_methods())}")
    try:
        module = importlib.import_module(METHOD_MODULES[name])
    except ModuleNotFoundError as error:
        if error.name == METHOD_MODULES[name]:
            raise UserError(f"method '{name}' is not implemented yet: use one of {', '.join(available_methods())}") from None
        raise
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, ClusteringMethod) and value.name == name:
            return value
    raise RuntimeError(f"module {METHOD_MODULES[name]} defines no ClusteringMethod named '{name}'")


__all__ = ["ClusteringMethod", "InputSpec", "METHOD_MODULES", "available_methods", "get_method_class"]
