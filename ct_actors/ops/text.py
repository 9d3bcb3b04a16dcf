"""Plain-text and Markdown tables (pure)."""

from __future__ import annotations

from collections.abc import Sequence


def _cells(rows: Sequence[Sequence[object]]) -> list[list[str]]:
    return [["" if v is None else str(v) for v in row] for row in rows]


def text_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None
) -> str:
    """A fixed-width table for a terminal: `align` has one letter per column, 'l' or 'r'
    (default: left). Columns are separated by two spaces; a dashed rule under the header."""
    body = _cells(rows)
    align = align or "l" * len(headers)
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = [
            cell.rjust(widths[i]) if align[i] == "r" else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(row) for row in body)])


def _md_escape(cell: str) -> str:
    return cell.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None
) -> str:
    """A GitHub-flavoured Markdown table; `align` as in `text_table` (default: left)."""
    align = align or "l" * len(headers)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [
        "| " + " | ".join(_md_escape(h) for h in headers) + " |",
        "|" + "|".join(rule) + "|",
    ]
    for row in _cells(rows):
        lines.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
    return "\n".join(lines)


def parse_markdown_table(text: str) -> list[list[str]]:
    """The rows (header first, rule dropped) of the first Markdown table in `text`: the inverse
    of `markdown_table`, for tests and tools reading a report."""
    rows: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells: list[str] = []
        current = ""
        i = 1
        while i < len(line):
            ch = line[i]
            if ch == "\\" and i + 1 < len(line):
                current += line[i + 1]
                i += 2
                continue
            if ch == "|":
                cells.append(current.strip())
                current = ""
            else:
                current += ch
            i += 1
        if all(set(c) <= set("-:") and c for c in cells):
            continue
        rows.append(cells)
    return rows
