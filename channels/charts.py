"""Charts for staff pages as inline SVG, drawn on the server: no script, no CDN, nothing fetched.
Text is 18 px or larger and scales with the page; colours keep 4.5:1 contrast on white."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo
from html import escape

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
