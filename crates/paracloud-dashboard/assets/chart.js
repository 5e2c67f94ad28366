// Time-series charts on a canvas, one point a second, with markers on the timeline (the
// autoscaler's decisions) whose text shows on hover. No library: a chart is a few lines.

const PAD = { left: 44, right: 8, top: 8, bottom: 18 };

export class Chart {
  // `series`: [{ name, color, value: (second) => number }]; `unit`: the axis' unit.
  constructor(canvas, { series, unit, digits = 0, minTop = 0, whole = false, tip }) {
    this.canvas = canvas;
    this.series = series;
    this.unit = unit;
    this.digits = digits;
    this.tip = tip;
    this.minTop = minTop;
    this.whole = whole;
    this.seconds = [];
    this.markers = [];
    this.lines = [];
    this.span = 300_000;
    canvas.addEventListener('mousemove', (e) => this.hover(e));
    canvas.addEventListener('mouseleave', () => { this.tip.hidden = true; });
  }

  // `seconds`: [{ at, ... }] oldest first; `markers`: [{ at, text }]; `lines`: [{ value, label, color }].
  set(seconds, markers, lines) {
    this.seconds = seconds;
    this.markers = markers;
    this.lines = lines || [];
    this.draw();
  }

  // The time shown: what the seconds cover, at least a minute and at most `span`.
  window() {
    const last = this.seconds.length ? this.seconds[this.seconds.length - 1].at : Date.now();
    const to = Math.max(last, ...this.markers.map((m) => m.at).filter((at) => at <= last + 5_000));
    const first = this.seconds.length ? this.seconds[0].at : to;
    return { from: to - Math.min(this.span, Math.max(60_000, to - first)), to };
  }

  draw() {
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = c.clientWidth || 600;
    const height = c.clientHeight || 140;
    if (c.width !== Math.round(width * ratio)) c.width = Math.round(width * ratio);
    if (c.height !== Math.round(height * ratio)) c.height = Math.round(height * ratio);
    const g = c.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const { from, to } = this.window();
    const shown = this.seconds.filter((s) => s.at >= from);
    let max = 0;
    for (const s of shown) for (const series of this.series) max = Math.max(max, series.value(s) || 0);
    for (const line of this.lines) max = Math.max(max, line.value);
    // Counts get whole ticks: a top that four divides.
    const top = this.whole ? Math.max(4, Math.ceil(Math.max(max, this.minTop) / 4) * 4)
      : 4 * niceStep(Math.max(max, this.minTop) / 4);
    const digits = stepDigits(top / 4, this.digits);
    const x = (at) => PAD.left + ((at - from) / (to - from)) * (width - PAD.left - PAD.right);
    const y = (v) => height - PAD.bottom - (v / top) * (height - PAD.top - PAD.bottom);
    this.scale = { x, from, to, width };

    g.font = '11px system-ui, sans-serif';
    g.strokeStyle = '#e3e7ee';
    g.fillStyle = '#6b7280';
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const v = (top / 4) * i;
      g.beginPath();
      g.moveTo(PAD.left, Math.round(y(v)) + 0.5);
      g.lineTo(width - PAD.right, Math.round(y(v)) + 0.5);
      g.stroke();
      g.textAlign = 'right';
      g.fillText(format(v, digits), PAD.left - 4, y(v) + 4);
    }
    g.textAlign = 'left';
    g.fillText(`${this.unit} · last ${Math.round((to - from) / 60_000)} min`, PAD.left, height - 4);

    for (const line of this.lines) {
      g.strokeStyle = line.color;
      g.setLineDash([5, 4]);
      g.beginPath();
      g.moveTo(PAD.left, y(line.value));
      g.lineTo(width - PAD.right, y(line.value));
      g.stroke();
      g.setLineDash([]);
      g.fillStyle = line.color;
      g.textAlign = 'right';
      g.fillText(line.label, width - PAD.right - 2, y(line.value) - 3);
    }

    for (const marker of this.markers) {
      if (marker.at < from || marker.at > to) continue;
      const mx = Math.round(x(marker.at)) + 0.5;
      g.strokeStyle = marker.color || '#c2410c';
      g.beginPath();
      g.moveTo(mx, PAD.top);
      g.lineTo(mx, height - PAD.bottom);
      g.stroke();
      g.fillStyle = marker.color || '#c2410c';
      g.beginPath();
      g.moveTo(mx - 4, PAD.top);
      g.lineTo(mx + 4, PAD.top);
      g.lineTo(mx, PAD.top + 6);
      g.fill();
    }

    const last = {};
    for (const series of this.series) {
      g.strokeStyle = series.color;
      g.lineWidth = 1.6;
      g.beginPath();
      let previous = null;
      for (const s of shown) {
        const v = series.value(s);
        if (v === undefined || v === null) { previous = null; continue; }
        // A gap of more than two seconds (no data plane, a page that fell behind) stays a gap.
        if (previous !== null && s.at - previous > 2_500) g.moveTo(x(s.at), y(v));
        else if (previous === null) g.moveTo(x(s.at), y(v));
        else g.lineTo(x(s.at), y(v));
        previous = s.at;
        last[series.name] = v;
      }
      g.stroke();
    }
    g.lineWidth = 1;
    // What the page shows, for people and for the browser tests alike.
    c.dataset.points = String(shown.length);
    c.dataset.max = String(max);
    const visible = this.markers.filter((m) => m.at >= from && m.at <= to);
    c.dataset.markers = String(visible.length);
    // Where the latest mark is, in CSS pixels from the canvas' left edge.
    c.dataset.markerX = visible.length ? String(Math.round(x(visible[visible.length - 1].at))) : '';
    c.dataset.last = JSON.stringify(last);
  }

  hover(e) {
    if (!this.scale) return;
    const rect = this.canvas.getBoundingClientRect();
    const px = e.clientX - rect.left;
    const { x } = this.scale;
    const near = this.markers.find((m) => Math.abs(x(m.at) - px) <= 5);
    let text;
    if (near) {
      text = `${clock(near.at)} ${near.text}`;
    } else {
      let best = null;
      for (const s of this.seconds) if (!best || Math.abs(x(s.at) - px) < Math.abs(x(best.at) - px)) best = s;
      if (!best || Math.abs(x(best.at) - px) > 8) { this.tip.hidden = true; return; }
      text = `${clock(best.at)} ` + this.series
        .map((series) => `${series.name} ${format(series.value(best) || 0, Math.max(this.digits, 1))}`)
        .join(' · ');
    }
    this.tip.textContent = text;
    this.tip.hidden = false;
    this.tip.style.left = `${Math.min(e.pageX + 12, window.innerWidth - 340)}px`;
    this.tip.style.top = `${e.pageY + 14}px`;
  }
}

// The fewest decimals that write every tick `step` apart exactly (at least `digits`).
function stepDigits(step, digits) {
  for (let d = digits; d < 4; d++) {
    const scaled = step * 10 ** d;
    if (Math.abs(Math.round(scaled) - scaled) < 1e-6) return d;
  }
  return 4;
}

// The smallest round step (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) at least `v`.
function niceStep(v) {
  if (!(v > 0)) return 0.25;
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (step * power >= v - 1e-9) return step * power;
  return 10 * power;
}

export function format(v, digits) {
  if (v >= 1000) return `${Math.round(v / 100) / 10}k`;
  return v.toFixed(digits);
}

export function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}
