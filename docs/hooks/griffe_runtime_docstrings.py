"""Griffe extension: a class whose docstring is assembled at import time gets that docstring in the API pages.

Griffe reads the source without running it, so ``__doc__ = _BatchNorm.__doc__ + "..."`` (how ``BatchNorm1d/2d/3d``,
``InstanceNorm1d/2d/3d``, ``BatchRenorm1d/2d/3d`` and ``SyncBatchNorm`` share one text and add their shapes) is
invisible to it and those pages would be empty.  For a class without a literal docstring whose body assigns
``__doc__``, this imports the class and uses the ``__doc__`` Python computed.
"""

from __future__ import annotations

import ast
import inspect
import sys
from typing import Any

import griffe


def _assigns_doc(node: Any) -> bool:
    if not isinstance(node, ast.ClassDef):
        return False
    return any(
        isinstance(statement, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__doc__" for t in statement.targets)
        for statement in node.body
    )


class RuntimeDocstrings(griffe.Extension):
    def on_class_instance(self, *, node: Any, cls: griffe.Class, agent: Any, **kwargs: Any) -> None:
        if cls.docstring is not None or not _assigns_doc(node):
            return
        # import from the source tree griffe reads (src/), whether or not normlab is installed
        source_root = cls.package.filepath.parent.parent
        try:
            runtime = griffe.dynamic_import(cls.path, import_paths=[str(source_root), *sys.path])
        except (
            ImportError
        ) as error:  # logged as a griffe warning: mkdocs build --strict fails on it
            griffe.logger.warning(f"{cls.path}: cannot import it to read its __doc__: {error}")
            return
        text = inspect.getdoc(runtime)
        if text:
            cls.docstring = griffe.Docstring(
                text,
                parent=cls,
                lineno=node.lineno,
                # the style the other docstrings are parsed with (mkdocs.yml: google)
                parser=getattr(agent, "docstring_parser", None),
                parser_options=getattr(agent, "docstring_options", None),
            )
