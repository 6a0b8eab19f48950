"""Charts for staff pages as inline SVG, drawn on the server: no script, no CDN, nothing fetched.
Text is 18 px or larger and scales with the page; colours keep 4.5:1 contrast on white."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from html import escape
from typing import Any

from markupsafe import Markup

BAR = "#0b5c8a"  # 7.1:1 on white
PEAK = "#fff1c2"  # the evening band behind the bars (text stays #1a1a1a on it)
TEXT = "#1a1a1a"


def hourly_bars(points: Sequence[tuple[datetime, int]], tz: tzinfo, *, title: str,
                peak: tuple[int, int] = (18, 21), label_every: int = 6) -> Markup:
    """One bar per hour, the evening peak hours shaded, an hour label every `label_every` hours,
    and each bar's count in its <title> (read out by screen readers, shown on hover)."""
    width, height, left, bottom, top = 1080, 320, 56, 56, 36
    plot_w, plot_h = width - left - 12, height - bottom - top
    most = max((n for _, n in points), default=0) or 1
    step = plot_w / max(len(points), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}" class="chart" font-size="20" fill="{TEXT}">',
             f"<title>{escape(title)}</title>"]
    for i, (start, count) in enumerate(points):
        local = start.astimezone(tz)
        x = left + i * step
        if peak[0] <= local.hour < peak[1]:
            parts.append(f'<rect x="{x:.1f}" y="{top}" width="{step:.1f}" height="{plot_h}" fill="{PEAK}"/>')
        bar_h = plot_h * count / most
        parts.append(f'<rect x="{x + 1:.1f}" y="{top + plot_h - bar_h:.1f}" width="{max(step - 2, 1):.1f}" '
                     f'height="{bar_h:.1f}" fill="{BAR}"><title>{local:%m月%d日 %H}时：{count}件</title></rect>')
        if local.hour % label_every == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - bottom + 26}">{local:%H}时</text>')
            if local.hour == 0:
                parts.append(f'<text x="{x:.1f}" y="{height - bottom + 50}">{local:%d}日</text>')
    parts.append(f'<text x="0" y="{top + 6}">{most}</text><text x="0" y="{top + plot_h}">0</text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 12}" y2="{top + plot_h}" '
                 f'stroke="{TEXT}" stroke-width="2"/></svg>')
    return Markup("".join(parts))


def meter(share: float | None, *, label: str) -> Markup:
    """A horizontal bar for a rate (办结率 …); "—" when there is nothing to divide."""
    if share is None:
        return Markup(f'<span class="meter-none" aria-label="{escape(label)}">—</span>')
    pct = round(share * 100)
    return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 24" class="meter" role="img" '
                  f'aria-label="{escape(label)} {pct}%"><rect width="200" height="24" fill="#e8eef2"/>'
                  f'<rect width="{2 * pct}" height="24" fill="{BAR}"/></svg>')


# --- the map of work orders ------------------------------------------------------------------------
GRID_COLOURS = ("#0b5c8a", "#1f6b2e", "#7a3b8f", "#8a4b08", "#005f6b")  # ≥4.5:1 on white, one per grid
PIN = {"overdue": "#a8201a", "open": "#0b3d5c", "done": "#5a5a5a"}
PIN_LABELS = {"overdue": "已超期", "open": "办理中", "done": "已办结"}


@dataclass(frozen=True)
class MapPin:
    reference: str
    lat: float
    lon: float
    category: str | None
    state: str  # overdue / open / done


def _project(bbox: tuple[float, float, float, float], width: int, height: int, pad: int):
    min_lat, max_lat, min_lon, max_lon = bbox
    span_lat, span_lon = max(max_lat - min_lat, 1e-6), max(max_lon - min_lon, 1e-6)

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return (pad + (lon - min_lon) / span_lon * (width - 2 * pad),
                pad + (max_lat - lat) / span_lat * (height - 2 * pad))
    return xy


def work_order_map(places: Sequence[Any], pins: Sequence[MapPin], bbox: tuple[float, float, float, float] | None,
                   link: Any) -> Markup:
    """Communities and roads of the gazetteer as labelled points coloured by grid, and one pin per
    ticket with coordinates (EXIF or the gazetteer), coloured by state, its letter the category's
    first character, linking to the ticket. No tiles: nothing leaves the premises. The view fits
    the places and pins; `bbox` (the service area) only when there is nothing to fit."""
    located = [p for p in places if p.lat is not None and p.lon is not None]
    points = [(p.lat, p.lon) for p in located] + [(t.lat, t.lon) for t in pins]
    if points:  # the places and pins themselves, with a margin (the service area is far wider)
        lats, lons = [a for a, _ in points], [b for _, b in points]
        margin_lat = max((max(lats) - min(lats)) * 0.15, 0.002)
        margin_lon = max((max(lons) - min(lons)) * 0.15, 0.002)
        bbox = (min(lats) - margin_lat, max(lats) + margin_lat, min(lons) - margin_lon, max(lons) + margin_lon)
    width, height, pad = 1080, 720, 60
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="工单地图" class="chart map" font-size="20" fill="{TEXT}">',
             f'<rect width="{width}" height="{height}" fill="#fbfbf8" stroke="#5a5a5a" stroke-width="2"/>']
    if bbox is None:
        parts.append(f'<text x="{pad}" y="{pad}">没有可画的地点。</text></svg>')
        return Markup("".join(parts))
    xy = _project(bbox, width, height, pad)
    grids = sorted({p.grid for p in located if p.grid})
    colour = {g: GRID_COLOURS[i % len(GRID_COLOURS)] for i, g in enumerate(grids)}
    for p in located:
        x, y = xy(p.lat, p.lon)
        c = colour.get(p.grid, TEXT)
        shape = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="46" fill="none" stroke="{c}" stroke-width="3" '
                 f'stroke-dasharray="6 4"/>' if p.kind == "community" else
                 f'<rect x="{x - 8:.1f}" y="{y - 8:.1f}" width="16" height="16" fill="{c}"/>')
        # Communities labelled above their circle, roads below their square; near the right edge
        # the label ends at the point instead of running off the drawing.
        anchor, tx = ("end", x - 12) if x > width * 0.7 else ("start", x + 12)
        ty = y - 52 if p.kind == "community" else y + 34
        parts.append(f'<g class="place">{shape}<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" '
                     f'fill="{c}">{escape(p.name)}{"（" + escape(p.grid) + "）" if p.grid else ""}</text></g>')
    for t in pins:
        x, y = xy(t.lat, t.lon)
        letter = escape((t.category or "其")[0])
        parts.append(f'<a href="{escape(link(t.reference))}" class="pin" data-state="{t.state}" '
                     f'data-reference="{t.reference}"><title>{t.reference} {escape(t.category or "未分类")} '
                     f'{PIN_LABELS[t.state]}</title><circle cx="{x:.1f}" cy="{y:.1f}" r="18" fill="{PIN[t.state]}"/>'
                     f'<text x="{x:.1f}" y="{y + 7:.1f}" fill="#ffffff" text-anchor="middle">{letter}</text></a>')
    parts.append("</svg>")
    return Markup("".join(parts))
