"""MkDocs hook: the Sphinx roles normlab's docstrings use (``:class:`X```, ``:func:`~a.b.f```) become links.

mkdocstrings renders a role as the literal text ``:class:`` followed by the code span.  Here the role is
removed and the code span becomes an optional cross-reference for mkdocs-autorefs, which resolves it later
(``on_env``) to the object's API page, or leaves plain code when the name is not documented.  As in Sphinx,
a leading ``~`` shows only the last component.  ``:math:`` spans are left to the MathML hook (as TeX), and
the reST ``::`` that introduces a literal block loses its second colon (the block is already code).
"""

from __future__ import annotations

import html
import re

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(?P<name>[^<]+)</code>")
_MATH_ROLE = re.compile(r":math:<code>(?P<tex>[^<]+)</code>")


def _autoref(match: re.Match) -> str:
    name = html.unescape(match.group("name")).strip()
    short = name.startswith("~")
    identifier = name.lstrip("~").rstrip("()")
    shown = identifier.rsplit(".", 1)[-1] if short else name
    if name.endswith("()") and short:
        shown += "()"
    return (
        f'<autoref identifier="{html.escape(identifier)}" optional>'
        f"<code>{html.escape(shown)}</code></autoref>"
    )


def on_page_content(content: str, page, config, files) -> str:
    content = _ROLE.sub(_autoref, content)
    # reST's "text::" before a literal block: the block is already code, the second colon is noise
    content = content.replace("::</p>", ":</p>")
    # as arithmatex writes inline math, so that the MathML hook (registered after this one) converts it
    return _MATH_ROLE.sub(
        lambda m: f'<span class="arithmatex">\\({m.group("tex")}\\)</span>', content
    )
