"""A self-contained HTML report of an analysis, and plain-text tables for the console.

The report is one file with no network access: inline CSS and JavaScript, PNGs inlined as
base64. It holds the summary tables (concept coverage of the SAE vs the baselines, best feature
per concept), then one card per selected feature: density, best concepts with F1, decoder
neighbours, and its top proteins with residues coloured by activation. A search box filters the
cards and the concept table by concept, feature or protein.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxsae.interpret.topk import FeatureStats, Featurizer

__all__ = [
    "Example",
    "FeatureCard",
    "CardLayout",
    "ReportPage",
    "build_feature_cards",
    "format_table",
    "protein_rows",
    "row_positions",
    "write_report",
]


class Example(NamedTuple):
    """One top-activating protein of a feature, around its peak residue.

    Attributes:
      protein_id: the protein's id.
      peak_position: residue position of the feature's maximum in this protein.
      peak_activation: the maximum.
      start: position of the first residue of ``residues``.
      residues: a window of the sequence around the peak (``"?"`` where unknown).
      activations: the feature's activation on each residue of the window.
      dssp: the window's DSSP string (``""`` when unknown).
      annotation: e.g. the SCOPe class of the protein (``""`` when unknown).
    """

    protein_id: str
    peak_position: int
    peak_activation: float
    start: int
    residues: str
    activations: tuple[float, ...]
    dssp: str
    annotation: str


class FeatureCard(NamedTuple):
    """Everything the report shows about one feature.

    Attributes:
      feature: feature index.
      density: fraction of residues where it fires.
      max_act: maximum activation.
      concepts: ``[(concept, F1, threshold), ...]`` best first.
      neighbours: ``[(feature, cosine), ...]`` nearest decoder directions.
      examples: top proteins.
      note: free text (e.g. "best SAE feature for superfamily b.1.1").
    """

    feature: int
    density: float
    max_act: float
    concepts: list[tuple[str, float, float]]
    neighbours: list[tuple[int, float]]
    examples: list[Example]
    note: str = ""


def protein_rows(source: Any, protein: int) -> tuple[np.ndarray, np.ndarray]:
    """``(acts (n, d), positions (n,))`` of one protein, ordered by position."""
    if hasattr(source, "positions_of"):
        rows = source.positions_of(protein)
        return source.take(rows), row_positions(source, rows)
    acts, index = source
    index = np.asarray(index)
    rows = np.flatnonzero(index[:, 0] == protein)
    rows = rows[np.argsort(index[rows, 1], kind="stable")]
    return np.asarray(np.asarray(acts)[rows], np.float32), index[rows, 1]


def row_positions(store: Any, rows: np.ndarray) -> np.ndarray:
    """Residue positions ``(n,)`` of global ``rows`` of an ``ActivationStore``."""
    out = np.empty((rows.size,), np.int64)
    shard_of = np.searchsorted(store.offsets, rows, side="right") - 1
    for i in np.unique(shard_of):
        sel = shard_of == i
        out[sel] = np.asarray(store.index(int(i)))[rows[sel] - store.offsets[i], 1]
    return out


@dataclass(frozen=True)
class CardLayout:
    """How much a feature card shows (validated on construction).

    Attributes:
      n_examples: distinct top proteins per feature.
      window: residues shown on each side of the peak.
      n_neighbours: decoder neighbours listed.
    """

    n_examples: int = 4
    window: int = 12
    n_neighbours: int = 5

    def __post_init__(self) -> None:
        for name in ("n_examples", "window", "n_neighbours"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"CardLayout.{name}: expected an int >= 0, found {value!r}")


def build_feature_cards(
    source: Any,
    proteins: Sequence[Mapping[str, Any]],
    featurizer: Featurizer,
    stats: FeatureStats,
    features: Sequence[int],
    *,
    best_concepts: Mapping[int, list[tuple[str, float, float]]] | None = None,
    neighbours: Any = None,
    notes: Mapping[int, str] | None = None,
    layout: CardLayout | None = None,
    **changes: Any,
) -> list[FeatureCard]:
    """Cards of the given features: top proteins re-encoded in full, windows around the peaks.

    Args:
      source: the ``ActivationStore`` (or ``(acts, index)``) the statistics came from.
      proteins: its protein records (``"id"``, ``"sequence"``, ``"dssp"``, ``"scop"``).
      featurizer: the features (the same as for ``stats``).
      stats: ``scan_features`` output.
      features: feature indices to describe.
      best_concepts: ``feature_best_concepts`` output.
      neighbours: ``decoder_neighbours`` output (or ``None``).
      notes: optional text per feature.
      layout: a ``CardLayout`` (default: its defaults).
      **changes: fields of ``CardLayout`` by name (``n_examples=``, ``window=``,
        ``n_neighbours=``); they replace those of ``layout``.

    Returns:
      One ``FeatureCard`` per feature, in the order given.
    """
    lay = dataclasses.replace(layout or CardLayout(), **changes)
    features = [int(f) for f in features]
    wanted = _top_proteins(stats, features, lay.n_examples)
    per_protein = _encode_proteins(
        source, featurizer, sorted({p for ps in wanted.values() for p in ps}), features
    )
    col_of = {f: j for j, f in enumerate(features)}
    cards = []
    for f in features:
        examples = []
        for p in wanted[f]:
            vals, pos = per_protein[p]
            rec = proteins[p] if p < len(proteins) else {}
            ex = _example(rec, p, vals[:, col_of[f]], pos, lay.window)
            if ex is not None:
                examples.append(ex)
        cards.append(
            FeatureCard(
                feature=f,
                density=float(stats.density[f]),
                max_act=float(stats.max_act[f]),
                concepts=list((best_concepts or {}).get(f, [])),
                neighbours=_neighbour_list(neighbours, f, lay.n_neighbours),
                examples=examples,
                note=(notes or {}).get(f, ""),
            )
        )
    return cards


def _top_proteins(
    stats: FeatureStats, features: Sequence[int], n_examples: int
) -> dict[int, list[int]]:
    """Per feature, its first ``n_examples`` distinct top proteins."""
    wanted: dict[int, list[int]] = {}
    for f in features:
        prots = [int(p) for p in stats.top_protein[f] if p >= 0]
        wanted[f] = list(dict.fromkeys(prots))[:n_examples]
    return wanted


def _encode_proteins(
    source: Any, featurizer: Featurizer, prots: Sequence[int], features: Sequence[int]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per protein, ``(activations (n, len(features)), positions (n,))`` of its residues."""
    cols = np.asarray(features, np.int64)
    apply = jax.jit(featurizer.apply)
    per_protein: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for p in prots:
        acts, pos = protein_rows(source, p)
        n = acts.shape[0]
        size = max(64, int(2 ** np.ceil(np.log2(max(n, 1)))))  # few distinct shapes to compile
        padded = np.zeros((size, acts.shape[1]), np.float32)
        padded[:n] = acts
        f_all = np.asarray(apply(featurizer.params, padded))[:n]
        per_protein[p] = (f_all[:, cols], pos)
    return per_protein


def _example(
    rec: Mapping[str, Any], p: int, v: np.ndarray, pos: np.ndarray, window: int
) -> Example | None:
    """The window of protein ``p`` (record ``rec``) around the peak of activations ``v (n,)``
    at positions ``pos (n,)``; ``None`` when the protein has no rows."""
    if v.size == 0:
        return None
    peak = int(np.argmax(v))
    lo, hi = max(0, peak - window), min(v.size, peak + window + 1)
    seq = rec.get("sequence") or ""
    ss = rec.get("dssp") or ""
    win_pos = pos[lo:hi]
    res = "".join(seq[q] if 0 <= q < len(seq) else "?" for q in win_pos)
    dssp = "".join(ss[q] if 0 <= q < len(ss) else " " for q in win_pos) if ss else ""
    return Example(
        protein_id=str(rec.get("id", p)),
        peak_position=int(pos[peak]),
        peak_activation=float(v[peak]),
        start=int(pos[lo]),
        residues=res,
        activations=tuple(float(a) for a in v[lo:hi]),
        dssp=dssp,
        annotation=str(rec.get("scop") or ""),
    )


def _neighbour_list(neighbours: Any, f: int, n: int) -> list[tuple[int, float]]:
    """``[(feature, cosine), ...]``: the first ``n`` decoder neighbours of ``f`` (or none)."""
    if neighbours is None:
        return []
    return [
        (int(i), float(c))
        for i, c in zip(neighbours.indices[f][:n], neighbours.cosines[f][:n], strict=True)
    ]


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table with aligned columns (floats with 3 decimals)."""

    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "nan" if not np.isfinite(v) else f"{v:.3f}"
        return str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    out = [line, sep] + [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body
    ]
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;
max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.good{background:#e3f4e1}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ccc;border-radius:6px;padding:8px 10px;width:540px;font-size:.85em}
.card h3{margin:.1em 0 .3em 0;font-size:1.1em}
.seq{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:nowrap;
overflow-x:auto;margin:2px 0}
.seq span{display:inline-block;width:10px;text-align:center}
.ss{color:#888}.meta{color:#666}.note{color:#8a4b00}
img{max-width:100%;border:1px solid #eee;margin:4px}
#q{font-size:1em;padding:4px 8px;width:360px}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:.8em}
"""

_JS = """
function filt(){var q=document.getElementById('q').value.toLowerCase();
var els=document.querySelectorAll('[data-search]');var n=0;
for(var i=0;i<els.length;i++){var ok=!q||els[i].getAttribute('data-search').indexOf(q)>=0;
els[i].style.display=ok?'':'none';if(ok&&els[i].classList.contains('card'))n++;}
document.getElementById('nshown').textContent=n;}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img(path: str | os.PathLike, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _html_table(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    search: bool = False,
    good: Sequence[bool] | None = None,
) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>"]
    for i, r in enumerate(rows):
        cells = []
        for v in r:
            if isinstance(v, float | np.floating):
                cells.append(f'<td class="num">{"nan" if not np.isfinite(v) else f"{v:.3f}"}</td>')
            elif isinstance(v, int | np.integer):
                cells.append(f'<td class="num">{int(v)}</td>')
            else:
                cells.append(f"<td>{v if str(v).startswith('<a ') else _e(v)}</td>")
        attrs = f' data-search="{_e(" ".join(map(str, r)).lower())}"' if search else ""
        if good is not None and good[i]:
            attrs += ' class="good"'
        out.append(f"<tr{attrs}>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _card_html(card: FeatureCard, linked: set[int]) -> str:
    words = [f"f{card.feature}", card.note] + [c for c, _, _ in card.concepts]
    words += [ex.protein_id for ex in card.examples] + [ex.annotation for ex in card.examples]
    parts = [
        f'<div class="card" id="f{card.feature}" data-search="{_e(" ".join(words).lower())}">',
        f"<h3>Feature {card.feature}</h3>",
    ]
    if card.note:
        parts.append(f'<div class="note">{_e(card.note)}</div>')
    parts.append(
        f'<div class="meta">density {card.density:.4g} ({100 * card.density:.2f}% of residues)'
        f" · max activation {card.max_act:.3g}</div>"
    )
    if card.concepts:
        items = ", ".join(f"{_e(c)} (F1 {f1:.2f} at t={t:g})" for c, f1, t in card.concepts)
        parts.append(f"<div><b>Best concepts</b>: {items}</div>")
    if card.neighbours:
        items = []
        for j, cos in card.neighbours:
            name = f"f{j}"
            items.append(
                f'<a href="#{name}">{name}</a> ({cos:.2f})'
                if j in linked
                else f"{name} ({cos:.2f})"
            )
        parts.append(f"<div><b>Decoder neighbours</b> (cosine): {', '.join(items)}</div>")
    peak = max((max(ex.activations, default=0.0) for ex in card.examples), default=0.0)
    peak = max(peak, 1e-12)
    for ex in card.examples:
        spans = []
        for i, (r, a) in enumerate(zip(ex.residues, ex.activations, strict=True)):
            alpha = min(max(a / peak, 0.0), 1.0)
            spans.append(
                f'<span style="background:rgba(214,39,40,{alpha:.2f})" '
                f'title="{ex.start + i}: {a:.3g}">{_e(r)}</span>'
            )
        parts.append(
            f'<div class="meta">{_e(ex.protein_id)} {_e(ex.annotation)} · peak '
            f"{ex.peak_activation:.3g} at residue {ex.peak_position} (window from {ex.start})</div>"
        )
        parts.append('<div class="seq">' + "".join(spans) + "</div>")
        if ex.dssp:
            ss = "".join(f"<span>{_e(c)}</span>" for c in ex.dssp)
            parts.append(f'<div class="seq ss">{ss}</div>')
    parts.append("</div>")
    return "\n".join(parts)


@dataclass(frozen=True)
class ReportPage:
    """What ``write_report`` puts on the page.

    Attributes:
      title: page title.
      intro: a paragraph of plain text under the title.
      summary: ``(rows, headers)`` of the headline table.
      concept_table: ``(rows, headers)`` of the per-concept table (searchable).
      concept_good: per concept row, highlight it (e.g. covered by the SAE).
      cards: feature cards.
      images: ``{caption: png path}``, inlined as base64.
      sections: extra ``(heading, plain text)`` paragraphs (e.g. the interpretation of the
        results).
      console: the console summary, shown verbatim.
    """

    title: str
    intro: str = ""
    summary: tuple[Sequence[Sequence[Any]], Sequence[str]] | None = None
    concept_table: tuple[Sequence[Sequence[Any]], Sequence[str]] | None = None
    concept_good: Sequence[bool] | None = None
    cards: Sequence[FeatureCard] = ()
    images: Mapping[str, str | os.PathLike] | None = None
    sections: Sequence[tuple[str, str]] = ()
    console: str = ""


def write_report(path: str | os.PathLike, page: ReportPage | None = None, **fields: Any) -> Path:
    """Write the self-contained HTML report (atomically).

    Args:
      path: output ``.html``.
      page: a ``ReportPage``.
      **fields: fields of ``ReportPage`` by name (``title=``, ``intro=``, ``summary=``,
        ``concept_table=``, ``concept_good=``, ``cards=``, ``images=``, ``sections=``,
        ``console=``): the page when ``page`` is not given, else changes to it.

    Returns:
      The path written.
    """
    from jaxsae.data.store import atomic_save_text

    page = ReportPage(**fields) if page is None else dataclasses.replace(page, **fields)
    body = _overview_html(page) + _detail_html(page)
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(page.title)}</title><style>{_CSS}</style><script>{_JS}</script></head>"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_text(path, doc)
    return path


def _overview_html(page: ReportPage) -> list[str]:
    """Title, intro, headline table, text sections and plots."""
    body = [f"<h1>{_e(page.title)}</h1>"]
    if page.intro:
        body.append(f"<p>{_e(page.intro)}</p>")
    if page.summary is not None:
        body.append("<h2>Concept coverage</h2>")
        body.append(_html_table(*page.summary))
    for heading, text in page.sections:
        body.append(f"<h2>{_e(heading)}</h2>")
        body.extend(f"<p>{_e(p)}</p>" for p in text.split("\n\n") if p.strip())
    if page.images:
        body.append("<h2>Plots</h2>")
        for caption, p in page.images.items():
            body.append(
                f"<figure>{_img(p, caption)}<figcaption>{_e(caption)}</figcaption></figure>"
            )
    return body


def _detail_html(page: ReportPage) -> list[str]:
    """Search box, per-concept table, feature cards and the console summary."""
    body = [
        '<h2>Search</h2><input id="q" oninput="filt()" placeholder="concept, feature or protein: '
        'e.g. DSSP8 H, superfamily b.1.1, f12"> <span class="meta"><span id="nshown">'
        f"{len(page.cards)}</span> feature cards shown</span>"
    ]
    if page.concept_table is not None:
        body.append("<h2>Best feature per concept (chosen on validation, scored on test)</h2>")
        body.append(_html_table(*page.concept_table, search=True, good=page.concept_good))
    if page.cards:
        linked = {c.feature for c in page.cards}
        body.append("<h2>Features</h2>")
        body.append('<div class="cards">')
        body.extend(_card_html(c, linked) for c in page.cards)
        body.append("</div>")
    if page.console:
        body.append(f"<h2>Console summary</h2><pre>{_e(page.console)}</pre>")
    return body
