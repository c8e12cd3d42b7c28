// Events per second over the last few minutes, drawn by hand on a canvas.
//
// One bucket per second of wall time in a fixed ring, so memory is constant. Buckets are
// chosen by the clock, not by a timer: browsers run timers in background tabs as rarely as
// once a minute, and a timer-driven ring would then squeeze a minute into one second. The
// chart is redrawn once a second (and on resize), never per event. Seconds in which this
// view missed or lost events get a red tick along the bottom, so a dip in the line is never
// mistaken for quiet.

const SECONDS = 300;

const nowSecond = () => Math.floor(performance.now() / 1000);

/** A "nice" axis maximum at or above `v`: 1, 2 or 5 times a power of ten. */
function niceMax(v) {
  if (v <= 5) return 5;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
}

export class RateChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.counts = new Float64Array(SECONDS);
    this.marks = new Uint8Array(SECONDS);
    this.head = nowSecond(); // the current, still-filling second
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  /** Moves the ring forward to `second`, emptying the buckets it passes. */
  roll(second) {
    if (second - this.head >= SECONDS) {
      this.counts.fill(0);
      this.marks.fill(0);
      this.head = second;
      return;
    }
    while (this.head < second) {
      this.head += 1;
      this.counts[this.head % SECONDS] = 0;
      this.marks[this.head % SECONDS] = 0;
    }
  }

  add(n = 1) {
    const s = nowSecond();
    if (s !== this.head) this.roll(s);
    this.counts[s % SECONDS] += n;
  }

  /** Marks the current second as one with missed or lost events. */
  mark() {
    const s = nowSecond();
    if (s !== this.head) this.roll(s);
    this.marks[s % SECONDS] = 1;
  }

  /** Redraws, and returns the count of the last whole second. */
  tick() {
    this.roll(nowSecond());
    this.draw();
    return this.counts[(this.head - 1 + SECONDS) % SECONDS];
  }

  draw() {
    const { canvas } = this;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    // Colours come from the stylesheet, so the chart follows the light or dark theme.
    const css = getComputedStyle(canvas);
    const ink = css.getPropertyValue('--muted').trim() || '#888';
    const grid = css.getPropertyValue('--line').trim() || '#ccc';
    const accent = css.getPropertyValue('--accent').trim() || '#2563eb';
    const bad = css.getPropertyValue('--bad').trim() || '#dc2626';
    ctx.font = '11px system-ui, sans-serif';

    // Oldest to newest, the still-filling second left out so the line does not dip at the end.
    const values = [];
    const marks = [];
    for (let i = 1; i < SECONDS; i++) {
      const j = (this.head + i) % SECONDS; // head + 1 is the oldest second kept
      values.push(this.counts[j]);
      marks.push(this.marks[j]);
    }
    const top = niceMax(Math.max(...values));
    const left = 44;
    const right = 8;
    const plotTop = 8;
    const plotBottom = h - 18;
    const x = (i) => left + ((w - left - right) * i) / (values.length - 1);
    const y = (v) => plotBottom - ((plotBottom - plotTop) * v) / top;

    ctx.strokeStyle = grid;
    ctx.fillStyle = ink;
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (const f of [0, 0.5, 1]) {
      const yy = Math.round(y(top * f)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(w - right, yy);
      ctx.stroke();
      ctx.fillText((top * f).toLocaleString(), left - 6, yy);
    }
    ctx.textBaseline = 'alphabetic';
    ctx.textAlign = 'left';
    ctx.fillText('−5 min', left, h - 4);
    ctx.textAlign = 'center';
    ctx.fillText('−2.5 min', (left + w - right) / 2, h - 4);
    ctx.textAlign = 'right';
    ctx.fillText('now', w - right, h - 4);

    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.lineTo(x(values.length - 1), plotBottom);
    ctx.lineTo(x(0), plotBottom);
    ctx.closePath();
    ctx.globalAlpha = 0.18;
    ctx.fillStyle = accent;
    ctx.fill();
    ctx.globalAlpha = 1;
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.strokeStyle = accent;
    ctx.lineWidth = 1.5;
    ctx.stroke();

    ctx.fillStyle = bad;
    marks.forEach((m, i) => m && ctx.fillRect(x(i) - 1, plotBottom - 6, 3, 6));
  }
}
