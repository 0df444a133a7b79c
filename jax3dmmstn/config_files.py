"""Loading the Python config files of ``configs/`` (files loaded by path, as train.py does)."""

import importlib.util
import os

import ml_collections


def load_config(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file at ``path`` (e.g. ``configs/synthetic.py``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    name = "jax3dmmstn_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def load_sibling_config(anchor_file: str, name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of ``NAME.py`` in the folder of ``anchor_file`` (a config's __file__)."""
    return load_config(os.path.join(os.path.dirname(os.path.abspath(anchor_file)), f"{name}.py"))
