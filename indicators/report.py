"""An HTML page of a scored pool that a person looks at: `score --report DIR`, `select --report DIR`.

The page shows, per indicator, a histogram (pool and subset overlaid on the same
bins when a subset is given), the lowest- and highest-scoring records, how the
column was computed and whether it is healthy (`health`), plus the Spearman
correlation matrix of the indicators, the indicators a profile left out and
the counts of the run.

It is one self-contained file, DIR/index.html: the plots are PNGs (matplotlib,
Agg canvas, no pyplot state) inlined as data: URIs. The page can be moved,
mailed or served without losing its images, and it is written with one atomic
rename, so a reader never sees the text of one run beside the plots of another.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from instructmining.errors import InputError, OutputExistsError
from instructmining.indicators.health import HealthFlag, check_health
from instructmining.records import Record
from instructmining.writers import atomic_path, check_writable

if TYPE_CHECKING:
    from instructmining.indicators.engine import ScoreReport

PAGE = "index.html"
#: characters of a text field shown for an example record
TRUNCATE = 300
#: lowest and highest records shown per indicator
N_EXAMPLES = 5
MAX_BINS = 40
POOL_COLOR = "#4c72b0"
SUBSET_COLOR = "#dd8452"
_SPACE = re.compile(r"\s+")
_PROBLEMS = {"mostly_nan": "mostly NaN", "few_values": "few values"}
_OPTION = re.compile(r"--[a-z][a-z-]*(?: [A-Za-z_]+=[A-Z]+| [a-z]+\b)?")


def check_report_dir(directory: str | Path, *, overwrite: bool = False) -> Path:
    """Fail before any work when DIR/index.html may not be written; returns the page's path."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise InputError(f"--report {out}: exists and is not a folder; give a folder for the page")
    page = out / PAGE
    if page.exists() and not overwrite:
        raise OutputExistsError(f"--report {page}: exists already; pass --overwrite to replace it")
    check_writable(out, f"--report {out}")
    return page


def write_page(directory: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Write `text` to DIR/index.html atomically (DIR created if missing)."""
    page = check_report_dir(directory, overwrite=overwrite)
    page.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(page) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return page


def write_score_report(
    report: ScoreReport,
    directory: str | Path,
    *,
    source: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the page of a `score_file` run (scores, records, backends, left-out indicators)."""
    truncated = {name: int(run.get("truncated", 0)) for name, run in report.runs.items()}
    counts: list[tuple[str, str]] = [
        ("records scored", str(report.n_records)),
        ("rows rejected (--on-error skip)", str(report.n_rejects)),
        ("records truncated at the maximum length", _per_indicator(truncated)),
        ("profile", str(report.profile)),
        ("layout", report.schema),
        ("scores file", str(report.output)),
    ]
    if source is not None:
        counts.insert(0, ("data", str(source)))
    text = render_page(
        f"Scores of {Path(source).name if source is not None else report.output.name}",
        report.scores,
        report.records,
        report.columns,
        counts=counts,
        computed_by=report.computed_by,
        left_out=report.left_out,
        health=report.health,
    )
    return write_page(directory, text, overwrite=overwrite)


def _per_indicator(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{k} {v}" for k, v in counts.items() if v) + ")"


def render_page(
    title: str,
    scores: Any,
    records: Sequence[Record],
    columns: Sequence[str],
    *,
    selected: Any = None,
    counts: Sequence[tuple[str, str]] = (),
    computed_by: Mapping[str, str] | None = None,
    left_out: Mapping[str, str] | None = None,
    health: Sequence[HealthFlag] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The HTML page; `scores` (DataFrame) has one row per record of `records`, in order.

    `selected`: a boolean mask over the rows (the subset; None for a pool alone).
    `counts`: (label, value) rows of the header table. `left_out`: indicator ->
    why it was not computed (None: no such section). `health`: flags computed
    elsewhere, else computed here over `columns`.
    """
    columns = list(columns)
    if len(scores) != len(records):
        raise ValueError(f"{len(scores)} score rows for {len(records)} records")
    mask = None if selected is None else np.asarray(selected, dtype=bool)
    computed_by = dict(computed_by or {})
    flags = {f.indicator: f for f in (check_health(scores, columns) if health is None else health)}
    values = {c: scores[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in columns}
    ids = np.array([r.id for r in records], dtype=str)
    e = html.escape

    parts = [_HEAD.format(title=e(title))]
    parts.append(f"<h1>{e(title)}</h1>")
    if mask is not None:
        parts.append(
            f'<p class="lede">Pool of {len(records)} records and the {int(mask.sum())} '
            f'selected: <span class="swatch pool"></span> pool, '
            f'<span class="swatch subset"></span> subset.</p>'
        )
    parts += [f'<p class="note">{e(n)}</p>' for n in notes]
    if counts:
        parts.append('<h2 id="counts">Counts</h2><table class="facts">')
        parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in counts]
        parts.append("</table>")

    parts.append('<h2 id="health">Indicator health</h2>')
    if flags:
        parts.append('<ul class="flags">')
        parts += [f"<li>{e(f.message)}</li>" for f in flags.values()]
        parts.append("</ul>")
    else:
        parts.append(
            f'<p class="ok">All {len(columns)} columns vary: none is constant, mostly NaN '
            "or limited to a handful of values.</p>"
        )
    parts.append(
        '<p class="rules">Flagged: a constant column, more than half NaN, or at most 5 '
        "distinct values over 100 or more records (values compared at 6 significant "
        "digits). Such a column cannot rank records.</p>"
    )

    parts.append('<h2 id="indicators">Indicators</h2>')
    parts.append(_overview(columns, values, mask, computed_by, flags))

    if left_out is not None:
        parts.append('<h2 id="left-out">Left out</h2>')
        if left_out:
            parts.append('<ul class="left-out">')
            parts += [f"<li><b>{e(k)}</b>: {_options(v)}</li>" for k, v in left_out.items()]
            parts.append("</ul>")
        else:
            parts.append("<p>No indicator was left out.</p>")

    parts.append('<h2 id="correlations">Correlations</h2>')
    if len(columns) >= 2:
        corr_note = "over the pool" if mask is not None else ""
        parts.append(
            f"<p>Spearman rank correlation between indicators {corr_note}"
            " (pairs of non-NaN values; – where a column is constant or too short).</p>"
        )
        parts.append(_img(_correlation_png(scores, columns), "Spearman correlation matrix"))
    else:
        parts.append("<p>One indicator: nothing to correlate.</p>")

    for col in columns:
        parts.append(
            _section(col, values[col], records, ids, mask, computed_by.get(col), flags.get(col))
        )
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def _overview(
    columns: Sequence[str],
    values: Mapping[str, np.ndarray],
    mask: np.ndarray | None,
    computed_by: Mapping[str, str],
    flags: Mapping[str, HealthFlag],
) -> str:
    e = html.escape
    head = ["indicator", "computed by", "count", "NaN", "mean", "std", "min", "median", "max"]
    if mask is not None:
        head.append("subset mean")
    head.append("health")
    rows = ["<table class='overview'><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for col in columns:
        v = values[col]
        ok = v[np.isfinite(v)]
        stats = [str(ok.size), str(v.size - ok.size)]
        if ok.size:
            stats += [
                _num(ok.mean()),
                _num(ok.std(ddof=1) if ok.size > 1 else 0.0),
                _num(ok.min()),
                _num(float(np.median(ok))),
                _num(ok.max()),
            ]
        else:
            stats += ["–"] * 5
        if mask is not None:
            sub = v[mask]
            sub = sub[np.isfinite(sub)]
            stats.append(_num(sub.mean()) if sub.size else "–")
        flag = flags.get(col)
        status = (
            f'<span class="bad">{e(", ".join(_PROBLEMS.get(p, p) for p in flag.problems))}</span>'
            if flag
            else '<span class="good">ok</span>'
        )
        rows.append(
            f'<tr><td><a href="#ind-{_anchor(col)}">{e(col)}</a></td>'
            f"<td>{e(computed_by.get(col, ''))}</td>"
            + "".join(f'<td class="num">{s}</td>' for s in stats)
            + f"<td>{status}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _section(
    col: str,
    values: np.ndarray,
    records: Sequence[Record],
    ids: np.ndarray,
    mask: np.ndarray | None,
    how: str | None,
    flag: HealthFlag | None,
) -> str:
    e = html.escape
    out = [f'<section id="ind-{_anchor(col)}"><h2>{e(col)}</h2>']
    if how:
        out.append(f'<p class="how">computed by {e(how)}</p>')
    if flag is not None:
        out.append(f'<p class="flag">{e(flag.message)}</p>')
    png, caption = _histogram_png(col, values, mask)
    if png is None:
        out.append(f"<p>{e(caption)}</p>")
    else:
        out.append(_img(png, f"Histogram of {col}"))
        if caption:
            out.append(f'<p class="caption">{e(caption)}</p>')
    low, high = _extremes(values, ids)
    if low.size:
        out.append(_examples(f"Lowest {len(low)}", low, values, records, mask))
        out.append(_examples(f"Highest {len(high)}", high, values, records, mask))
    out.append("</section>")
    return "\n".join(out)


def _extremes(values: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the N_EXAMPLES lowest and highest values (NaN skipped, ties by id)."""
    valid = np.nonzero(np.isfinite(values))[0]
    if not valid.size:
        return valid, valid
    low = valid[np.lexsort((ids[valid], values[valid]))][:N_EXAMPLES]
    high = valid[np.lexsort((ids[valid], -values[valid]))][:N_EXAMPLES]
    return low, high


def _examples(
    title: str,
    rows: np.ndarray,
    values: np.ndarray,
    records: Sequence[Record],
    mask: np.ndarray | None,
) -> str:
    e = html.escape
    head = "<th>value</th><th>id</th>" + ("<th>selected</th>" if mask is not None else "")
    out = [f"<h3>{title}</h3>", f"<table class='examples'><tr>{head}<th>record</th></tr>"]
    for i in rows:
        rec = records[int(i)]
        fields = [("instruction", rec.instruction)]
        if rec.input:
            fields.append(("input", rec.input))
        fields.append(("output", rec.output))
        text = "".join(
            f'<div><span class="field">{name}</span><span class="t">{e(_truncate(value))}</span></div>'
            for name, value in fields
        )
        chosen = ""
        if mask is not None:
            chosen = f"<td>{'yes' if mask[int(i)] else ''}</td>"
        out.append(
            f'<tr><td class="num">{_num(values[int(i)])}</td>'
            f'<td class="id">{e(rec.id)}</td>{chosen}<td class="text">{text}</td></tr>'
        )
    out.append("</table>")
    return "\n".join(out)


def _options(text: str) -> str:
    """Escaped `text` with command-line options (--model KEY=PATH) kept on one line."""
    return _OPTION.sub(lambda m: f"<code>{m.group(0)}</code>", html.escape(text))


def _truncate(text: str) -> str:
    flat = _SPACE.sub(" ", text).strip()
    return flat if len(flat) <= TRUNCATE else flat[: TRUNCATE - 1].rstrip() + "…"


def _num(value: Any) -> str:
    v = float(value)
    if not np.isfinite(v):
        return "–"
    return f"{v:.0f}" if 1e4 <= abs(v) < 1e7 else f"{v:.4g}"


def _anchor(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


# --- plots ------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


#: a positive column whose max is this many times its median gets a log axis
LOG_RATIO = 20.0


def _bins(pool: np.ndarray) -> tuple[np.ndarray, bool, str]:
    """(bin edges, log axis?, caption) for the pool's values.

    Skewed positive columns (lengths, perplexities) get log-spaced bins; other long
    tails are cut at the 0.5th and 99.5th percentiles, values beyond counted in the
    end bins; whole numbers over a short span get one bar per value.
    """
    lo, hi = float(pool.min()), float(pool.max())
    if hi <= lo:
        return np.array([lo - 0.5, hi + 0.5]), False, ""
    median = float(np.median(pool))
    if lo > 0 and hi / median > LOG_RATIO:
        edges = np.geomspace(lo, hi, MAX_BINS + 1)
        if np.all(pool == np.round(pool)):  # whole numbers: edges between them, no empty bins
            edges = np.unique(np.round(edges)) + 0.5
            edges = np.concatenate([[max(lo - 0.5, lo / 2)], edges[edges < hi], [hi + 0.5]])
        return (
            edges,
            True,
            (
                "Logarithmic axis (the values span orders of magnitude); bar heights are per "
                "decade, so bins of different widths compare."
            ),
        )
    caption = ""
    if pool.size >= 50:
        qlo, qhi = (float(q) for q in np.quantile(pool, [0.005, 0.995]))
        if qhi > qlo and hi - lo > 1.5 * (qhi - qlo):
            outside = int(np.sum((pool < qlo) | (pool > qhi)))
            caption = (
                f"Axis cut at the 0.5th and 99.5th percentiles ({qlo:.4g} to {qhi:.4g}); "
                f"the {outside} values beyond (range {lo:.4g} to {hi:.4g}) are counted in "
                "the end bins."
            )
            lo, hi = qlo, qhi
    inner = pool[(pool >= lo) & (pool <= hi)]
    distinct = np.unique(inner)
    if np.all(distinct == np.round(distinct)) and distinct.max() - distinct.min() < MAX_BINS:
        # whole numbers over a short span: one bar per value
        return np.arange(distinct.min() - 0.5, distinct.max() + 1.0), False, caption
    edges = np.histogram_bin_edges(inner, bins="auto", range=(lo, hi))
    if edges.size - 1 > MAX_BINS:
        edges = np.linspace(lo, hi, MAX_BINS + 1)
    return edges, False, caption


def _histogram_png(col: str, values: np.ndarray, mask: np.ndarray | None) -> tuple[str | None, str]:
    ok = np.isfinite(values)
    pool = values[ok]
    if not pool.size:
        return None, "No value to plot: every value is NaN."
    edges, log, caption = _bins(pool)

    def drawn(v: np.ndarray) -> np.ndarray:  # values beyond a cut axis go to the end bins
        return np.clip(v, edges[0], edges[-1])

    widths = np.diff(np.log10(edges)) if log else np.ones(edges.size - 1)

    def heights(v: np.ndarray, share: bool) -> np.ndarray:
        counts = np.histogram(drawn(v), bins=edges)[0].astype(np.float64)
        return (counts / v.size if share else counts) / widths

    unit = " per decade" if log else ""
    fig = _figure(12.0, 3.2)
    ax = fig.add_subplot()
    if mask is None:
        ax.stairs(heights(pool, False), edges, fill=True, color=POOL_COLOR, alpha=0.85)
        ax.set_ylabel("records" + unit)
    else:
        sub = values[mask & ok]
        ax.stairs(
            heights(pool, True),
            edges,
            fill=True,
            color=POOL_COLOR,
            alpha=0.55,
            label=f"pool ({pool.size}), mean {pool.mean():.4g}",
        )
        if sub.size:
            ax.stairs(
                heights(sub, True),
                edges,
                fill=True,
                color=SUBSET_COLOR,
                alpha=0.55,
                label=f"subset ({sub.size}), mean {sub.mean():.4g}",
            )
            ax.axvline(sub.mean(), color=SUBSET_COLOR, linestyle="--", linewidth=1.2)
        ax.axvline(pool.mean(), color=POOL_COLOR, linestyle="--", linewidth=1.2)
        ax.set_ylabel("share of records" + unit)
        ax.legend(fontsize=9, frameon=False)
    ax.set_ylim(bottom=0)
    if log:
        ax.set_xscale("log")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel(col)
    ax.spines[["top", "right"]].set_visible(False)
    missing = int(values.size - pool.size)
    if missing:
        caption = f"{caption} {missing} NaN values are not drawn.".strip()
    return _data_uri(fig), caption


def _correlation_png(scores: Any, columns: Sequence[str]) -> str:
    frame = scores[list(columns)].astype(np.float64)
    corr = frame.corr(method="spearman", min_periods=3).to_numpy()
    n = len(columns)
    fig = _figure(1.6 + 0.8 * n, 1.0 + 0.7 * n)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(corr), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n), list(columns), rotation=35, ha="right")
    ax.set_yticks(range(n), list(columns))
    for i in range(n):
        for j in range(n):
            v = corr[i, j]
            text = "–" if not np.isfinite(v) else f"{v:.2f}".replace("-0.00", "0.00")
            color = "white" if np.isfinite(v) and abs(v) > 0.6 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color=color)
    fig.colorbar(image, ax=ax, shrink=0.85, label="Spearman ρ")
    return _data_uri(fig)


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
  background: #fafafa; margin: 0; line-height: 1.45; }}
main {{ max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 4rem; background: #fff; }}
h1 {{ font-size: 1.6rem; margin: 0 0 .6rem; }}
h2 {{ font-size: 1.25rem; margin: 2rem 0 .6rem; border-bottom: 1px solid #ddd;
  padding-bottom: .2rem; }}
h3 {{ font-size: 1rem; margin: 1rem 0 .4rem; }}
table {{ border-collapse: collapse; font-size: .88rem; margin: .3rem 0 .8rem; }}
th, td {{ border: 1px solid #ddd; padding: .25rem .5rem; text-align: left;
  vertical-align: top; }}
th {{ background: #f2f2f2; font-weight: 600; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
td.id {{ font-family: ui-monospace, monospace; font-size: .8rem; white-space: nowrap; }}
table.examples {{ width: 100%; }}
table.examples td.text {{ width: 100%; }}
table.examples td.text div {{ display: grid; grid-template-columns: 6.2rem 1fr;
  margin-bottom: .2rem; }}
table.examples td.text div span.t {{ overflow-wrap: anywhere; }}
span.field {{ color: #777; font-size: .72rem; padding-top: .12rem;
  text-transform: uppercase; letter-spacing: .03em; }}
code {{ font-family: ui-monospace, monospace; font-size: .85em; white-space: nowrap; }}
img {{ max-width: 100%; height: auto; display: block; margin: .4rem 0; }}
ul.flags {{ background: #fff4e5; border-left: 4px solid #e8a33d; padding: .6rem 1rem .6rem 2rem; }}
p.flag {{ background: #fff4e5; border-left: 4px solid #e8a33d; padding: .3rem .8rem; }}
p.ok {{ background: #eef7ee; border-left: 4px solid #5a9e5a; padding: .3rem .8rem; }}
p.rules, p.caption, p.how, p.note {{ color: #666; font-size: .85rem; margin: .2rem 0; }}
span.bad {{ color: #b45309; font-weight: 600; }}
span.good {{ color: #2f7d32; }}
span.swatch {{ display: inline-block; width: .9em; height: .9em; vertical-align: -.1em;
  border-radius: 2px; }}
span.swatch.pool {{ background: #4c72b0; }}
span.swatch.subset {{ background: #dd8452; }}
section {{ margin-top: 2.2rem; }}
a {{ color: #2a5db0; }}
</style></head><body><main>"""
