"""MkDocs hook: the executed tutorials import this checkout's normlab, and the nav lists the ones present.

* The notebooks run in a Jupyter kernel started by mkdocs-jupyter, a child process that inherits the
  environment.  ``src/`` is put first on its ``PYTHONPATH`` (as an absolute path), so the tutorials import
  the code of this checkout whether or not normlab is installed and whatever the kernel's working directory.
* A nav entry for a tutorial file that does not exist is dropped (logged at INFO) instead of failing the
  build: the tutorials and the site are written on separate branches.  A missing guide or API page still
  fails ``mkdocs build --strict``; ``tests/docs/test_site.py`` checks that every ``docs/tutorials/*.py`` got
  an executed page.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.tutorials")

TUTORIALS_DIR = "tutorials"


def _prepend_pythonpath(path: Path) -> None:
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    if str(path) not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(path), *entries])


def _drop_missing_tutorials(items: list, docs_dir: Path) -> list:
    kept = []
    for item in items:
        if isinstance(item, dict):
            (title, value), *_ = item.items()
            if isinstance(value, list):
                section = _drop_missing_tutorials(value, docs_dir)
                if section:  # a section left empty is dropped with its last page
                    kept.append({title: section})
                continue
            target = value
        else:
            target = item
        if (
            isinstance(target, str)
            and target.startswith(TUTORIALS_DIR + "/")
            and not (docs_dir / target).is_file()
        ):
            log.info("tutorial %s is not in docs/ (yet): left out of the nav", target)
            continue
        kept.append(item)
    return kept


def on_config(config):
    repo_root = Path(config["config_file_path"]).resolve().parent
    _prepend_pythonpath(repo_root / "src")
    if config["nav"] is not None:
        config["nav"] = _drop_missing_tutorials(config["nav"], Path(config["docs_dir"]))
    return config
