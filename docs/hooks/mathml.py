"""MkDocs hook: turn the site's LaTeX into MathML when the site is built, so pages need no script and no CDN.

Two sources of math reach the HTML:

* Markdown pages, through ``pymdownx.arithmatex`` (generic mode): ``<span class="arithmatex">\\(...\\)</span>``
  and ``<div class="arithmatex">\\[...\\]</div>``.
* The executed tutorials, through mkdocs-jupyter (nbconvert): markdown cells keep ``$...$`` and ``$$...$$``
  as written, for a MathJax script that nbconvert would load from a CDN.  That script block is removed, and
  the dollar-delimited math outside code, ``<pre>``, ``<script>`` and ``<style>`` is converted here instead.

Browsers render MathML Core natively (Chromium 109+, Firefox, Safari).  A formula latex2mathml cannot convert
is a warning, which ``mkdocs build --strict`` turns into a failed build.
"""

from __future__ import annotations

import html
import logging
import re

from latex2mathml.converter import convert

log = logging.getLogger("mkdocs.hooks.mathml")

# arithmatex (generic): inline \( \) in a span, display \[ \] in a div; the TeX inside is HTML-escaped
_ARITHMATEX = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<block>.*?)\\\])\s*</(?P=tag)>',
    re.DOTALL,
)
# nbconvert's MathJax loader and configuration (it would fetch MathJax from a CDN)
_MATHJAX_BLOCK = re.compile(
    r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.DOTALL
)
# regions of a notebook page whose dollars are not math
_VERBATIM = re.compile(
    r"(<pre\b.*?</pre>|<code\b.*?</code>|<script\b.*?</script>|<style\b.*?</style>|<[^>]+>)",
    re.DOTALL | re.IGNORECASE,
)
_DISPLAY_DOLLARS = re.compile(r"\$\$(.+?)\$\$", re.DOTALL)
# $...$ with no space just inside the dollars and no digit right after the closing one ("$5 and $6" is prose)
_INLINE_DOLLARS = re.compile(r"(?<![\\$])\$(?=\S)([^$]+?)(?<=\S)\$(?![\d$])")


def _to_mathml(tex: str, display: str, page) -> str | None:
    source = html.unescape(tex).strip()
    try:
        return convert(source, display=display)
    except Exception as error:  # latex2mathml raises several exception types for unsupported TeX
        log.warning(
            "%s: cannot convert the formula %r to MathML: %s", page.file.src_uri, source, error
        )
        return None


def _convert_arithmatex(content: str, page) -> str:
    def replace(match: re.Match) -> str:
        if match.group("block") is not None:
            mathml = _to_mathml(match.group("block"), "block", page)
        else:
            mathml = _to_mathml(match.group("inline"), "inline", page)
        return match.group(0) if mathml is None else mathml

    return _ARITHMATEX.sub(replace, content)


def _convert_dollars(text: str, page) -> str:
    def display(match: re.Match) -> str:
        mathml = _to_mathml(match.group(1), "block", page)
        return match.group(0) if mathml is None else mathml

    def inline(match: re.Match) -> str:
        mathml = _to_mathml(match.group(1), "inline", page)
        return match.group(0) if mathml is None else mathml

    return _INLINE_DOLLARS.sub(inline, _DISPLAY_DOLLARS.sub(display, text))


def _convert_notebook(content: str, page) -> str:
    content = _MATHJAX_BLOCK.sub("", content)
    # display math may span lines and markup (nbconvert wraps it in <p>), so find $$ pairs in the text
    # between verbatim regions; tags inside a formula are rare and would be a warning, not silent garbage
    parts = _VERBATIM.split(content)
    text = [(i, part) for i, part in enumerate(parts) if i % 2 == 0]
    for i, part in text:
        if "$" in part:
            parts[i] = _convert_dollars(part, page)
    return "".join(parts)


def on_page_content(content: str, page, config, files) -> str:
    content = _convert_arithmatex(content, page)
    if page.file.src_uri.endswith(".py"):  # an executed tutorial
        content = _convert_notebook(content, page)
    return content
