"""Human-readable results: a markdown model card per candidate and a standalone HTML report.

The model card is what a sceptic reads first: where the data came from, which features and parameters, the
out-of-sample metrics of the candidate next to every naive baseline, and how much of the result the
hyperparameter search alone could explain (the deflated Sharpe ratio and the probability of backtest
overfitting from :mod:`alphaforge.overfitting`), each with a one-line plain reading.

The HTML report is one file with no external resources: PNG plots are embedded as base64 data URIs, markdown
sections are rendered by a small converter that understands the subset the cards use (headings, paragraphs,
bullet lists, pipe tables, fenced code, inline code and bold) and escapes every other character, so a value such
as ``<script>`` shows as text. A section may instead be a :class:`TrustedHtml` fragment, inserted as is.
"""

from __future__ import annotations

import base64
import html
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alphaforge.io import write_text_atomic
from alphaforge.schema import finite_or_none as _number

__all__ = [
    "CARD_METRICS",
    "TrustedHtml",
    "dsr_reading",
    "html_report",
    "markdown_to_html",
    "model_card",
    "pbo_reading",
    "plot_pbo_logits",
    "write_text_atomic",
]

# (metrics key, column label, format): the evaluate metrics JSON keys, in card order.
CARD_METRICS: tuple[tuple[str, str, str], ...] = (
    ("ic_mean", "IC", "num"), ("ic_tstat", "IC t", "num"), ("rank_ic_mean", "rank IC", "num"),
    ("rank_ic_tstat", "rank IC t", "num"), ("directional_accuracy", "hit rate", "pct"),
    ("sharpe", "net Sharpe", "num"), ("annual_return", "ann. return", "pct"), ("max_drawdown", "max DD", "pct"),
    ("turnover", "turnover", "num"), ("interval_coverage", "interval cov.", "pct"), ("n_periods", "periods", "int"),
)
# Metrics where larger is better, for the "beats k of n baselines" line (max_drawdown is <= 0: larger is better).
_HIGHER_IS_BETTER: tuple[tuple[str, str], ...] = (
    ("sharpe", "net Sharpe"), ("ic_mean", "IC"), ("rank_ic_mean", "rank IC"),
    ("directional_accuracy", "hit rate"), ("max_drawdown", "max drawdown"),
)
DSR_CONFIDENCE = 0.95
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class TrustedHtml(str):
    """An HTML fragment that :func:`html_report` inserts without escaping: only for markup this code built."""


# -------------------------------------------------------------------------------------------- model card




def _format(value: Any, kind: str) -> str:
    number = _number(value)
    if number is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * number:.2f}%"
    if kind == "int":
        return f"{int(round(number))}"
    return f"{number:.3f}"


def _plain(value: Any) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:g}"


def _cell(value: Any) -> str:
    """Text safe inside a markdown table cell: one line, pipes escaped."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> list[str]:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def dsr_reading(dsr: Mapping[str, Any]) -> str:
    """One plain sentence on a :func:`alphaforge.overfitting.deflated_sharpe_ratio` result."""
    value = _number(dsr.get("dsr"))
    n_trials = dsr.get("n_trials")
    if value is None:
        return f"DSR not available: {dsr.get('reason') or 'no reason recorded'}."
    if value >= DSR_CONFIDENCE:
        return (f"DSR {value:.2f}: the Sharpe ratio beats what the best of {n_trials} skill-less trials would "
                f"show by luck, with {value:.0%} confidence.")
    return (f"DSR {value:.2f}: the Sharpe is not distinguishable from the best of {n_trials} random trials "
            f"(below {DSR_CONFIDENCE:.0%} confidence).")


def pbo_reading(pbo: Mapping[str, Any]) -> str:
    """One plain sentence on a :func:`alphaforge.overfitting.pbo_cscv` result."""
    value = _number(pbo.get("pbo"))
    if value is None:
        return f"PBO not available: {pbo.get('reason') or 'no reason recorded'}."
    if value < 0.25:
        return (f"PBO {value:.2f}: the in-sample best trial stays above the median trial out of sample in "
                f"{1 - value:.0%} of splits; the selection carries over.")
    if value < 0.5:
        return (f"PBO {value:.2f}: the in-sample best trial falls to the median or below out of sample in "
                f"{value:.0%} of splits; the selection carries over only weakly.")
    return (f"PBO {value:.2f}: the in-sample best trial does no better than the median trial out of sample in "
            f"{value:.0%} of splits; picking the best trial is no better than chance.")


def _comparison_lines(candidate: str, row: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """For each headline metric: which baselines the candidate beats, out of sample."""
    lines = []
    for key, label in _HIGHER_IS_BETTER:
        mine = _number(row.get(key))
        comparable = {name: _number(b.get(key)) for name, b in baselines.items() if _number(b.get(key)) is not None}
        if mine is None or not comparable:
            lines.append(f"- {label}: not comparable (missing for {candidate if mine is None else 'every baseline'})")
            continue
        beaten = sorted(name for name, theirs in comparable.items() if mine > theirs)
        best_name = max(comparable, key=lambda n: comparable[n])
        kind = "pct" if key in ("directional_accuracy", "max_drawdown") else "num"
        named = f" ({', '.join(beaten)})" if beaten else ""
        lines.append(f"- {label}: {candidate} {_format(mine, kind)} beats {len(beaten)} of {len(comparable)} "
                     f"baselines{named}; best baseline {best_name} {_format(comparable[best_name], kind)}")
    return lines


def model_card(candidate: str, *, spec: Mapping[str, Any], data_summary: Mapping[str, Any],
               params: Mapping[str, Any], metrics: Mapping[str, Any], overfitting: Mapping[str, Any]) -> str:
    """A markdown model card for one candidate (a model family the evaluate stage scored).

    ``spec``: ``models/trained/spec.json`` (target, horizon, task, feature_version, features).
    ``data_summary``: the ingest summary (source, rows, symbols, start, end); optional ``oos_start``/``oos_end``
    give the out-of-sample span. ``params``: the candidate's hyperparameters. ``metrics``: the evaluate metrics
    JSON (``{"models": {...}, "baselines": {...}, "mode", "periods_per_year", "cost_bps"}``). ``overfitting``:
    :func:`alphaforge.overfitting.overfitting_summary`'s ``{"dsr": ..., "pbo": ...}``, optionally with
    ``n_trials_tried`` and ``study``. Raises ``ValueError`` when the candidate has no metrics.
    """
    models = metrics.get("models") or {}
    if candidate not in models:
        raise ValueError(f"model_card: candidate {candidate!r} not in metrics['models'] (have {sorted(models)}); "
                         "rule: a card describes a model the evaluate stage scored")
    baselines: Mapping[str, Mapping[str, Any]] = metrics.get("baselines") or {}
    row = models[candidate]
    features = list(spec.get("features") or [])
    lines = [f"# Model card: {candidate}", ""]
    lines += [
        f"Target **{spec.get('target', 'n/a')}** over **{spec.get('horizon', 'n/a')}** bars "
        f"({spec.get('task', 'n/a')}); feature set version {spec.get('feature_version', 'n/a')}. Every figure "
        "below is out of sample (walk-forward, purged and embargoed test folds).",
        "",
        "## Data",
        "",
        f"- source: {data_summary.get('source', 'n/a')}",
        f"- range: {data_summary.get('start', 'n/a')} to {data_summary.get('end', 'n/a')}",
    ]
    if data_summary.get("oos_start") or data_summary.get("oos_end"):
        lines.append(f"- out-of-sample range: {data_summary.get('oos_start', 'n/a')} to "
                     f"{data_summary.get('oos_end', 'n/a')}")
    lines += [
        f"- rows: {data_summary.get('rows', 'n/a')}, symbols: {data_summary.get('symbols', 'n/a')}",
        f"- evaluation: {metrics.get('mode', 'n/a')}, {_plain(metrics.get('periods_per_year'))} periods per year, "
        f"traded at {metrics.get('execution', 'n/a')} (a signal never trades at the price it was computed from), "
        f"strategy {metrics.get('primary_strategy', 'n/a')}; commission {_plain(metrics.get('cost_bps'))} bps per "
        "side plus half the spread and market impact",
        "",
        f"## Features ({len(features)})",
        "",
        ", ".join(f"`{f}`" for f in features) if features else "n/a",
        "",
        "## Parameters",
        "",
    ]
    if params:
        lines += _table(["parameter", "value"], [[k, repr(v) if isinstance(v, str) else str(v)]
                                                 for k, v in sorted(params.items())], numeric_from=2)
    else:
        lines.append("defaults (no tuned parameters)")
    header = ["signal", *[label for _, label, _ in CARD_METRICS]]
    table_rows = [[f"**{candidate}** (candidate)", *[_format(row.get(k), kind) for k, _, kind in CARD_METRICS]]]
    table_rows += [[f"{name} (baseline)", *[_format(values.get(k), kind) for k, _, kind in CARD_METRICS]]
                   for name, values in baselines.items()]
    lines += ["", "## Out-of-sample metrics against the naive baselines", "", *_table(header, table_rows), ""]
    lines += _comparison_lines(candidate, row, baselines)

    dsr: Mapping[str, Any] = overfitting.get("dsr") or {}
    pbo: Mapping[str, Any] = overfitting.get("pbo") or {}
    lines += ["", "## Overfitting", ""]
    if overfitting.get("study"):
        lines.append(f"Tuning study: {overfitting['study']}.")
        lines.append("")
    lines += _table(["figure", "value"], [
        ["Sharpe (per period)", _format(dsr.get("sr"), "num")],
        ["Sharpe (annualised)", _format(dsr.get("sr_annualised"), "num")],
        ["probabilistic Sharpe ratio vs 0", _format(dsr.get("psr"), "num")],
        ["trials tried", _format(dsr.get("n_trials"), "int")],
        ["expected max Sharpe of the trials by luck (annualised)",
         _format(dsr.get("expected_max_sr_annualised"), "num")],
        ["deflated Sharpe ratio", _format(dsr.get("dsr"), "num")],
        ["probability of backtest overfitting (CSCV)", _format(pbo.get("pbo"), "num")],
        ["CSCV splits", _format(pbo.get("n_combinations"), "int")],
        ["trials with out-of-sample returns (CSCV)", _format(pbo.get("n_trials"), "int")],
        ["P(in-sample winner loses out of sample)", _format(pbo.get("prob_oos_loss"), "num")],
    ])
    lines += ["", f"- {dsr_reading(dsr)}", f"- {pbo_reading(pbo)}", ""]
    return "\n".join(lines)


def plot_pbo_logits(pbo: Mapping[str, Any], path: str | Path, *, title: str = "CSCV logits") -> Path:
    """Histogram of a :func:`alphaforge.overfitting.pbo_cscv` result's logits as a PNG (Agg canvas, atomic).

    Mass at or left of the zero line (red bars) is the PBO: splits where the in-sample winner sat at or below
    the out-of-sample median. Without logits (``pbo`` None) the figure states the reason instead, so the report
    still has a plot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    logits = [v for v in (pbo.get("logits") or []) if _number(v) is not None]
    value = _number(pbo.get("pbo"))
    if logits and value is not None:
        import numpy as np

        values, counts = np.unique(np.round(np.asarray(logits, dtype=float), 9), return_counts=True)
        colours = ["#c44e52" if v <= 0 else "#4c72b0" for v in values]
        if len(values) <= 60:  # ranks are discrete: one bar per attainable logit
            width = 0.8 * float(np.diff(values).min()) if len(values) > 1 else 0.5
            axes.bar(values, counts, width=width, color=colours)
        else:
            axes.hist(logits, bins=40, color="#4c72b0", edgecolor="white")
        axes.axvline(0.0, color="#c44e52", linewidth=1.5)
        axes.set_xlabel("logit of the in-sample winner's out-of-sample relative rank")
        axes.set_ylabel("splits")
        axes.set_title(f"{title}: PBO {value:.2f} over {len(logits)} splits")
    else:
        axes.axis("off")
        axes.text(0.5, 0.5, f"PBO not available: {pbo.get('reason') or 'no reason recorded'}", ha="center",
                  va="center", wrap=True)
        axes.set_title(title)
    figure.tight_layout()
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------------------------------- HTML


_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*")


def _inline(text: str) -> str:
    """Escape ``text`` and render `code` and **bold** spans (nothing else is markup)."""
    parts: list[str] = []
    position = 0
    for match in _INLINE.finditer(text):
        parts.append(html.escape(text[position:match.start()]))
        if match.group(1) is not None:
            parts.append(f"<code>{html.escape(match.group(1))}</code>")
        else:
            parts.append(f"<strong>{_inline(match.group(2))}</strong>")
        position = match.end()
    parts.append(html.escape(text[position:]))
    return "".join(parts)


def _split_row(line: str) -> list[str]:
    """The cells of a pipe-table line; ``\\|`` is a literal pipe and ``\\\\`` a literal backslash."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    cells, current, index = [], [], 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body) and body[index + 1] in "|\\":
            current.append(body[index + 1])
            index += 2
            continue
        if char == "|":
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        index += 1
    cells.append("".join(current).strip())
    return cells


_BULLET = re.compile(r"^[-*]\s+")
_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def markdown_to_html(text: str, *, heading_offset: int = 0) -> str:
    """Render the markdown subset the model cards use; every character of content is HTML-escaped.

    ``heading_offset`` demotes headings (``#`` becomes ``h{1 + offset}``, at most ``h6``), so a card's own title
    nests under the report section that holds it.
    """
    lines = text.splitlines()
    out: list[str] = []
    paragraph: list[str] = []
    index = 0

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(s.strip() for s in paragraph))}</p>")
            paragraph.clear()

    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if not stripped:
            flush()
            index += 1
        elif stripped.startswith("```"):
            flush()
            block = []
            index += 1
            while index < len(lines) and not lines[index].strip().startswith("```"):
                block.append(lines[index])
                index += 1
            out.append(f"<pre><code>{html.escape(chr(10).join(block))}</code></pre>")
            index += 1
        elif (heading := re.match(r"^(#{1,6})\s+(.*)$", stripped)) is not None:
            flush()
            level = min(6, len(heading.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(heading.group(2).strip())}</h{level}>")
            index += 1
        elif stripped.startswith("|") and index + 1 < len(lines) and _SEPARATOR.match(lines[index + 1]):
            flush()
            header = _split_row(stripped)
            numeric = [cell.strip().endswith(":") for cell in _split_row(lines[index + 1])]
            index += 2
            rows = []
            while index < len(lines) and lines[index].strip().startswith("|"):
                rows.append(_split_row(lines[index]))
                index += 1

            def cell(tag: str, value: str, column: int) -> str:
                attribute = ' class="num"' if column < len(numeric) and numeric[column] else ""
                return f"<{tag}{attribute}>{_inline(value)}</{tag}>"

            head = "".join(cell("th", h, i) for i, h in enumerate(header))
            body = "".join("<tr>" + "".join(cell("td", c, i) for i, c in enumerate(r)) + "</tr>" for r in rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif _BULLET.match(stripped):
            flush()
            items = []
            while index < len(lines) and _BULLET.match(lines[index].strip()):
                item = _BULLET.sub("", lines[index].strip())
                items.append(f"<li>{_inline(item)}</li>")
                index += 1
            out.append(f"<ul>{''.join(items)}</ul>")
        else:
            paragraph.append(line)
            index += 1
    flush()
    return "\n".join(out)


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1f2328; line-height: 1.45; padding: 0 1rem; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; }
th { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
code { background: #f6f8fa; padding: .1rem .3rem; border-radius: 3px; font-size: .85rem; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: .85rem; }
""".strip()


def _embedded_png(path: str | Path) -> str:
    data = Path(path).read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"html_report: {path} is not a PNG file (bad signature); rule: images are PNG plots")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def html_report(title: str, sections: Sequence[tuple[str, str]],
                images: Sequence[str | Path | tuple[str, str | Path]] = ()) -> str:
    """One standalone HTML page: the title, each (heading, body) section, then the images.

    A body is markdown (rendered by :func:`markdown_to_html`, all content escaped, its headings demoted to
    ``h3`` and below under the section's ``h2``) unless it is a
    :class:`TrustedHtml`. An image is a PNG path (captioned with its file name) or a (caption, path) pair; it is
    embedded as a base64 data URI so the file can be mailed or archived alone. Raises on a missing or non-PNG
    image.
    """
    body: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    for heading, text in sections:
        rendered = str(text) if isinstance(text, TrustedHtml) else markdown_to_html(text, heading_offset=2)
        body.append(f"<section>\n<h2>{html.escape(heading)}</h2>\n{rendered}\n</section>")
    if images:
        figures = []
        for image in images:
            caption, path = (image if isinstance(image, tuple) else (Path(image).name, image))
            figures.append(f'<figure><img src="{_embedded_png(path)}" alt="{html.escape(caption)}">'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        body.append("<section>\n<h2>Plots</h2>\n" + "\n".join(figures) + "\n</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{html.escape(title)}"
            f"</title>\n<style>\n{_STYLE}\n</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
