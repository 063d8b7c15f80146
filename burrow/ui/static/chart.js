// A small live line chart on a <canvas>: the last `points` samples of a few series, newest at
// the right, the y axis scaled to the largest value shown. No library: a few dozen lines.

export const COLORS = {
  visible: '#2f7ed8',
  in_flight: '#e8871e',
  delayed: '#8e5bc4',
  sent: '#2e9e5b',
  delivered: '#e8871e',
  deleted: '#c8473f',
};

export class Chart {
  /** series: [{key, label}]; the key picks the color (COLORS) and the value in push(). */
  constructor(canvas, series, points = 80) {
    this.canvas = canvas;
    this.series = series;
    this.points = points;
    this.samples = [];
  }

  push(values) {
    this.samples.push(this.series.map((s) => Math.max(0, values[s.key] ?? 0)));
    if (this.samples.length > this.points) this.samples.shift();
    this.draw();
  }

  draw() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 300;
    const height = canvas.clientHeight || 140;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const left = 44, top = 8, right = width - 8, bottom = height - 18;
    const top_value = niceCeiling(Math.max(1, ...this.samples.flat()));
    g.font = '11px system-ui, sans-serif';
    g.fillStyle = '#6b7280';
    g.strokeStyle = '#e5e7eb';
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const y = Math.round(bottom - ((bottom - top) * i) / 4) + 0.5;
      g.beginPath();
      g.moveTo(left, y);
      g.lineTo(right, y);
      g.stroke();
      g.fillText(label(top_value * i / 4), left - 6, y);
    }
    g.textAlign = 'left';
    g.fillText(`last ${this.points} samples`, left, height - 6);
    const step = (right - left) / (this.points - 1);
    const start = right - step * (this.samples.length - 1);
    this.series.forEach((s, index) => {
      g.strokeStyle = g.fillStyle = COLORS[s.key] || '#111827';
      g.lineWidth = 2;
      g.beginPath();
      this.samples.forEach((sample, i) => {
        const x = start + step * i;
        const y = bottom - ((bottom - top) * sample[index]) / top_value;
        if (i === 0) g.moveTo(x, y);
        else g.lineTo(x, y);
      });
      g.stroke();
      const last = this.samples[this.samples.length - 1];
      if (last) {
        g.beginPath();
        g.arc(right, bottom - ((bottom - top) * last[index]) / top_value, 3, 0, 2 * Math.PI);
        g.fill();
      }
    });
  }
}

function niceCeiling(v) {
  const magnitude = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * magnitude) return m * magnitude;
  return 10 * magnitude;
}

function label(v) {
  if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(2)}`;
}
