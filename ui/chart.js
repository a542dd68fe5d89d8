// Small line charts of the last minutes, drawn as SVG from numbers (no library: three charts
// of a few hundred points need a polyline, not a charting framework).

const NS = "http://www.w3.org/2000/svg";
const W = 300;
const H = 90;

function node(tag, attrs) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

/** Draw `points` ([{t, v}], t in ms) over the window ending `now`, `spanMs` long; with `hold`,
 * the last value holds until now (a level, such as users online, rather than a rate). */
export function drawLine(svg, points, now, spanMs, { hold = false } = {}) {
  while (svg.firstChild) svg.firstChild.remove();
  const shown = points.filter((p) => p.t >= now - spanMs && p.v != null);
  if (hold && shown.length) shown.push({ t: now, v: shown[shown.length - 1].v });
  const max = Math.max(1, ...shown.map((p) => p.v));
  const x = (t) => ((t - (now - spanMs)) / spanMs) * W;
  const y = (v) => H - 12 - (v / max) * (H - 24);
  svg.append(node("line", { x1: 0, y1: H - 12, x2: W, y2: H - 12, class: "axis" }));
  if (shown.length > 0) {
    const pts = shown.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
    svg.append(node("polyline", { points: pts, class: "line" }));
  }
  const last = shown.length ? shown[shown.length - 1].v : null;
  const label = node("text", { x: W - 4, y: 12, class: "now", "text-anchor": "end" });
  label.textContent = last == null ? "–" : format(last);
  const top = node("text", { x: 4, y: 12, class: "max" });
  top.textContent = `max ${format(max)}`;
  svg.append(label, top);
}

function format(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}
