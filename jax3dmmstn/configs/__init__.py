"""Training configs as Python (``get_config()`` returning an ``ml_collections.ConfigDict``).

They ship inside the package, so ``jax3dmmstn train --config synthetic`` works from a
wheel: ``synthetic`` (the default: built-in face model and rendered faces, trains on a
CPU), ``matconvnet`` (the original recipe: VGG-Face, imdb.mat), ``imdb`` and
``tfds_300wlp``. A config may also be any ``.py`` file with a ``get_config()``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil

import ml_collections


def available() -> list[str]:
    """Names of the configs shipped in the package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a packaged config (``"synthetic"``) or of a config file's path."""
    if name_or_path.endswith(".py") or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"config file {name_or_path} does not exist")
        module_name = "jax3dmmstn_config_" + os.path.splitext(os.path.basename(name_or_path))[0]
        spec = importlib.util.spec_from_file_location(module_name, name_or_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()
    if name_or_path not in available():
        raise ValueError(
            f"unknown config {name_or_path!r}; packaged configs: {', '.join(available())} "
            "(or give the path of a .py file with get_config())"
        )
    return importlib.import_module(f"jax3dmmstn.configs.{name_or_path}").get_config()
