"""The page shell: jinja2 environments over ``reports/templates`` (one stylesheet and one page shell for the
report and the compare page). HTML autoescapes every value, so dataset text (questions, answers, ids, tokens)
can never inject markup; Markdown escapes table cells with the ``md`` filter."""

from __future__ import annotations

import functools
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"


def md_escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(rows, header) -> str:
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@functools.cache
def environment(kind: str):
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=kind == "html",
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    if kind == "md":
        env.filters["md"] = md_escape
        env.globals["table"] = md_table
    return env


def render(template: str, **context) -> str:
    """Render ``templates/<template>`` (``.html.j2`` autoescaped, ``.md.j2`` as Markdown)."""
    return environment("html" if template.endswith(".html.j2") else "md").get_template(template).render(**context)
