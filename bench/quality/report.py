"""Tables of the quality benchmark: mean ± std over seeds, the gain rule, and docs/results.md sections.

Each benchmark script owns one section of ``docs/results.md``, between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``; re-running the script replaces only its own section.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results.md"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def cell(values: list[float] | None, digits: int = 4) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(rows: dict[str, dict[str, list[float]]], metrics: list[str], header: dict[str, str] | None = None,
                   digits: dict[str, int] | None = None) -> str:
    """``rows``: ``{model: {metric: [one value per seed]}}`` → a markdown table with a seeds column."""
    header, digits = header or {}, digits or {}
    lines = ["| model | seeds | " + " | ".join(header.get(m, m) for m in metrics) + " |", "|---|---:|" + "---|" * len(metrics)]
    for name, values in rows.items():
        seeds = max((len(v) for v in values.values()), default=0)
        lines.append(f"| {name} | {seeds} | " + " | ".join(cell(values.get(m), digits.get(m, 4)) for m in metrics) + " |")
    return "\n".join(lines)


def gain_verdict(ours: dict[str, list[float]], other: dict[str, list[float]], metric: str = "auc", lower_better: str | None = "ne") -> str:
    """The issue's rule: a gain is > max(0.001, twice the larger seed std) with NE moving the same way."""
    (m_ours, s_ours), (m_other, s_other) = mean_std(ours[metric]), mean_std(other[metric])
    delta, threshold = m_ours - m_other, max(0.001, 2 * max(s_ours, s_other))
    text = f"Δ{metric.upper()} {delta:+.4f} (threshold {threshold:.4f})"
    same_way = True
    if lower_better and lower_better in ours and lower_better in other:
        d_second = mean_std(ours[lower_better])[0] - mean_std(other[lower_better])[0]
        text += f", Δ{lower_better.upper()} {d_second:+.4f}"
        same_way = d_second < 0
    if delta > threshold and same_way:
        return text + " → **gain**"
    if -delta > threshold:
        return text + " → **loss**"
    return text + " → no clear difference"


KEPT = " [earlier run, folder not in this checkout]"


def section_table(name: str, path: Path = RESULTS) -> dict[str, list[str]]:
    """The first markdown table of the ``name`` section as written: ``{model: [the other cells]}``
    (model names without :data:`KEPT`); empty when the section or its table is missing."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    if begin not in text or end not in text:
        return {}
    rows: dict[str, list[str]] = {}
    for line in text.split(begin, 1)[1].split(end, 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if not cells or cells[0] == "model" or set(cells[0]) <= set("-:"):
            if rows and not cells:
                break  # the table ended
            continue
        rows[cells[0].removesuffix(KEPT)] = cells[1:]
    return rows


def kept_rows(earlier: dict[str, list[str]], regenerated: set[str]) -> list[str]:
    """Table lines for the rows of ``earlier`` (:func:`section_table`) that this run did not
    regenerate (their run folders are gone, e.g. in a fresh checkout): kept as written, marked."""
    return [f"| {name}{KEPT} | " + " | ".join(cells) + " |" for name, cells in earlier.items() if name not in regenerated]


KEPT_NOTE = f" Rows marked \"{KEPT.strip()}\" are copied from this section as it was before this invocation."


def with_kept_rows(section: str, table: str, regenerated: set[str], path: Path = RESULTS) -> tuple[str, dict[str, list[str]]]:
    """``table`` with the rows of ``section``'s table as written that are not in ``regenerated``
    appended (:func:`kept_rows`), and those rows (:func:`section_table`); say so with :data:`KEPT_NOTE`."""
    earlier = {name: cells for name, cells in section_table(section, path).items() if name not in regenerated}
    return (table + "\n" + "\n".join(kept_rows(earlier, regenerated)) if earlier else table), earlier


def cell_mean(text: str) -> float:
    """The mean of a table cell written by :func:`cell` (``"0.1012 ± 0.0039"`` or ``"0.1012"``)."""
    return float(text.split("±")[0])


def summary_values(cells: list[str], metrics: list[str]) -> dict[str, list[float]]:
    """A kept row's cells as written (``[seeds, one cell per metric]``, :func:`section_table`) turned
    into values for :func:`gain_verdict`, which reads only a mean and a sample std: ``"m ± s"`` gives
    the two values ``m ∓ s/√2`` (mean m, sample std s), ``"m"`` gives ``[m]``, ``"-"`` nothing."""
    out: dict[str, list[float]] = {}
    for metric, text in zip(metrics, cells[1:]):
        if text.strip() == "-":
            continue
        mean, _, std = text.partition("±")
        half = float(std) / np.sqrt(2) if std else None
        out[metric] = [float(mean)] if half is None else [float(mean) - half, float(mean) + half]
    return out


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the ``name`` section of ``docs/results.md``, atomically."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Quality results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
