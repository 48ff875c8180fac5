"""The tutorials in docs/tutorials/ are well-formed Jupytext notebooks (static checks only).

They are *executed* once, by the site build (``mkdocs build --strict`` with mkdocs-jupyter, in
tests/docs/test_site.py), where a failing cell fails the build; executing them here too would make CI pay
twice.  These tests catch what can be seen without running them: a file that is not valid Jupytext, a
missing title, a syntax error, an import from outside the documented dependencies or of a private normlab
name, an unseeded random draw, unbalanced math delimiters, a tutorial missing from the site's nav.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS_DIR = ROOT / "docs" / "tutorials"
TUTORIALS = [
    "01_bn_from_scratch.py",
    "02_bn_in_an_mlp.py",
    "03_why_bn_works.py",
    "04_bn_in_cnns.py",
    "05_inference_lifecycle.py",
    "06_adaline_standardization.py",
]
# what a tutorial may import: normlab, the scientific stack the docs extra documents, and the standard library
ALLOWED_THIRD_PARTY = {"normlab", "numpy", "matplotlib", "torch", "onnxruntime", "PIL"}


def _read(name: str):
    return jupytext.read(TUTORIALS_DIR / name)


def _code(cell) -> str:
    """A code cell's source with IPython magics (``%matplotlib inline``) removed, as plain Python."""
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))


def _imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_the_tutorial_list_matches_the_folder():
    present = sorted(p.name for p in TUTORIALS_DIR.glob("*.py"))
    assert present == sorted(TUTORIALS), (
        f"docs/tutorials/ holds {present}, this test lists {TUTORIALS}"
    )


@pytest.mark.parametrize("name", TUTORIALS)
def test_is_valid_jupytext_percent_notebook_with_a_title(name):
    text = (TUTORIALS_DIR / name).read_text(encoding="utf-8")
    assert text.startswith("# ---\n# jupyter:\n#   jupytext:\n"), f"{name}: no Jupytext header"
    assert "formats: py:percent" in text, f"{name}: the header does not declare py:percent"
    nb = _read(name)
    nbformat.validate(nb)
    cells = [c for c in nb.cells if c.source.strip()]
    assert cells and cells[0].cell_type == "markdown", f"{name}: the first cell is not markdown"
    title = cells[0].source.lstrip().splitlines()[0]
    assert re.fullmatch(r"# \S.*", title), (
        f"{name}: the first cell does not start with a '# Title': {title!r}"
    )
    assert sum(c.cell_type == "code" for c in cells) >= 3, f"{name}: fewer than 3 code cells"
    assert sum(c.cell_type == "markdown" for c in cells) >= 3, (
        f"{name}: fewer than 3 markdown cells"
    )


@pytest.mark.parametrize("name", TUTORIALS)
def test_code_compiles_and_imports_only_documented_dependencies(name):
    nb = _read(name)
    source = "\n\n".join(_code(c) for c in nb.cells if c.cell_type == "code")
    tree = ast.parse(source, filename=name)  # a syntax error fails here, with its line
    compile(tree, name, "exec")
    stdlib = sys.stdlib_module_names
    for module in _imported_modules(tree):
        top = module.split(".")[0]
        assert top in ALLOWED_THIRD_PARTY or top in stdlib, f"{name}: imports {module}"
        assert not any(part.startswith("_") for part in module.split(".")), (
            f"{name}: imports the private module {module}; tutorials use the public API"
        )
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("normlab"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{name}: imports private names {private} from {node.module}"


@pytest.mark.parametrize("name", TUTORIALS)
def test_random_draws_are_seeded(name):
    """Determinism: no draw from NumPy's global generator (np.random.rand, np.random.seed, ...); generators
    come from ``np.random.default_rng(seed)``."""
    nb = _read(name)
    tree = ast.parse("\n\n".join(_code(c) for c in nb.cells if c.cell_type == "code"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            inner = node.value
            if (
                inner.attr == "random"
                and isinstance(inner.value, ast.Name)
                and inner.value.id in ("np", "numpy")
            ):
                assert node.attr == "default_rng", (
                    f"{name}: uses np.random.{node.attr} (global state)"
                )
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "default_rng":
            assert node.args or node.keywords, f"{name}: np.random.default_rng() without a seed"


@pytest.mark.parametrize("name", TUTORIALS)
def test_figures_are_shown_and_math_delimiters_balance(name):
    nb = _read(name)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    if "plt.subplots" in code:
        assert "plt.show()" in code, f"{name}: creates figures but never calls plt.show()"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        text = re.sub(r"`[^`]*`", "", cell.source)  # dollars inside inline code are not math
        assert text.count("$$") % 2 == 0, f"{name}, markdown cell {i}: unbalanced $$"
        assert text.replace("$$", "").count("$") % 2 == 0, (
            f"{name}, markdown cell {i}: unbalanced $"
        )


class _AnyTagLoader:
    """A yaml SafeLoader that reads any tag (mkdocs.yml may hold ``!!python/name:`` tags) as a plain value."""

    @staticmethod
    def load(text: str):
        yaml = pytest.importorskip("yaml")

        class Loader(yaml.SafeLoader):
            pass

        def any_tag(loader, suffix, node):
            if isinstance(node, yaml.ScalarNode):
                return loader.construct_scalar(node)
            if isinstance(node, yaml.SequenceNode):
                return loader.construct_sequence(node)
            return loader.construct_mapping(node)

        Loader.add_multi_constructor("", any_tag)
        return yaml.load(text, Loader=Loader)


def _nav_targets(item) -> list[str]:
    if isinstance(item, str):
        return [item]
    if isinstance(item, list):
        return [t for entry in item for t in _nav_targets(entry)]
    if isinstance(item, dict):
        return [t for value in item.values() for t in _nav_targets(value)]
    return []


@pytest.mark.parametrize("name", TUTORIALS)
def test_listed_in_the_site_nav(name):
    config = ROOT / "mkdocs.yml"
    if not config.is_file():
        pytest.skip(
            "mkdocs.yml does not exist in this checkout (the site is built on another branch)"
        )
    nav = _AnyTagLoader.load(config.read_text(encoding="utf-8")).get("nav")
    if nav is None:
        pytest.skip("mkdocs.yml has no nav: MkDocs lists every page itself")
    assert f"tutorials/{name}" in _nav_targets(nav), (
        f"mkdocs.yml's nav does not list tutorials/{name}"
    )
