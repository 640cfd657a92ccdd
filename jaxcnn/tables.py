"""Tables as text: one formatter for the command lines (aligned plain text)
and the study reports (Markdown)."""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


def percent(x: float | None, digits: int = 2) -> str:
  if x is None:
    return "-"
  if math.isinf(x):
    return "inf"
  return f"{100 * x:.{digits}f}%"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                 align: str | None = None, *, markdown: bool = False) -> str:
  """A table of `rows` under `headers`, each cell written with str().

  Plain text (the default): columns padded to their widest cell and
  separated by two spaces; `align` has one 'l' or 'r' per column (default:
  first column left, the rest right). `markdown=True`: a GitHub-style pipe
  table, unpadded (`align` is ignored), with every '|' inside a cell
  escaped (a regex override like `bias$|^head/` would otherwise split it).
  """
  rows = [[str(c) for c in row] for row in rows]
  if markdown:
    rows = [[c.replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
  align = align or "l" + "r" * (len(headers) - 1)
  widths = [max([len(h)] + [len(r[i]) for r in rows])
            for i, h in enumerate(headers)]

  def line(cells):
    return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                     for c, w, a in zip(cells, widths, align)).rstrip()

  out = [line(headers), line(["-" * w for w in widths])]
  out += [line(r) for r in rows]
  return "\n".join(out)
