"""Readable command output: aligned ``key  value`` lines, tables, long values summarised.

The commands print these for people; each also has ``--json`` for scripts, which gets
everything, unsummarised.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

WIDTH = 100  # a summarised value is cut to fit a line of about this many characters


def fields(pairs: Iterable[tuple[str, Any]], indent: str = "") -> list[str]:
    """``key  value`` lines with the values aligned; a multi-line value continues aligned."""
    pairs = list(pairs)
    if not pairs:
        return []
    width = max(len(key) for key, _ in pairs)
    lines = []
    for key, value in pairs:
        first, *rest = str(value).split("\n") or [""]
        lines.append(f"{indent}{key:<{width}}  {first}".rstrip())
        lines += [f"{indent}{'':<{width}}  {line}".rstrip() for line in rest]
    return lines


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "") -> list[str]:
    """Columns padded to their widest cell; numbers (and their header) right-aligned."""
    body = [[_cell(c) for c in row] for row in rows]
    numeric = [all(_is_number(row[i]) for row in body) and bool(body) for i in range(len(header))]
    widths = [max(len(r[i]) for r in [list(header), *body]) for i in range(len(header))]
    lines = []
    for row in [list(header), *body]:
        cells = [
            c.rjust(w) if numeric[i] else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def summary(value: Any, width: int = WIDTH) -> str:
    """A JSON-like value on one line: a list of records says how many, long text is cut."""
    if isinstance(value, dict):
        text = ", ".join(f"{k} {_short(v)}" for k, v in value.items())
    elif isinstance(value, list):
        text = _short(value)
    else:
        text = _cell(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def summary_fields(record: dict[str, Any], indent: str = "") -> list[str]:
    """One summarised ``key  value`` line per top-level key of a nested record, each line
    about :data:`WIDTH` characters at most."""
    keys = max((len(str(k)) for k in record), default=0)
    width = max(WIDTH - len(indent) - keys - 3, 20)
    return fields(((str(k), summary(v, width)) for k, v in record.items()), indent)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return f"{{{len(value)} keys}}"
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value) and len(value) <= 8:
            return "[" + ", ".join(_cell(v) for v in value) + "]"
        return f"[{len(value)} entries]"
    return _cell(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, sort_keys=True)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%"))
    except ValueError:
        return text == "-"
    return True
