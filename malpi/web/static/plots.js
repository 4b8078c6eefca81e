// The last minute of telemetry, one small graph per series, drawn on a canvas.
const SECONDS = 60;
const SERIES = [
  { key: "steering", label: "steering", min: -1, max: 1, colour: "#5aaaf9" },
  { key: "throttle", label: "throttle", min: -1, max: 1, colour: "#fac828" },
  { key: "inference", label: "inference ms", min: 0, max: null, colour: "#6edc8c" },
  { key: "rate", label: "loop Hz", min: 0, max: null, colour: "#e0a0f0" },
  { key: "value", label: "value (expected return)", min: null, max: null, colour: "#f08c64" },
];

export class Plots {
  constructor() { this.samples = []; }

  add(t, values) {
    this.samples.push({ t, ...values });
    const oldest = t - SECONDS;
    while (this.samples.length && this.samples[0].t < oldest) this.samples.shift();
  }

  draw(canvas) {
    // Draw at the canvas's size on screen, in device pixels: sharp text on a phone too.
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(canvas.clientWidth * ratio);
    const height = Math.round(width * (canvas.clientWidth < 500 ? 0.8 : 0.4));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const g = canvas.getContext("2d");
    const w = canvas.width;
    const rowH = canvas.height / SERIES.length;
    g.fillStyle = "#101010";
    g.fillRect(0, 0, w, canvas.height);
    const last = this.samples.length ? this.samples[this.samples.length - 1].t : 0;
    SERIES.forEach((s, row) => {
      const top = row * rowH;
      const values = this.samples.map((p) => p[s.key]).filter((v) => v != null);
      const max = s.max ?? Math.max(1, ...values) * 1.1;
      const min = s.min ?? Math.min(-1, ...values) * 1.1;
      const band = 18 * ratio;  // the label's, above the line
      const y = (v) => top + rowH - 4 - ((v - min) / (max - min)) * (rowH - band - 8);
      g.strokeStyle = "#333";
      g.beginPath(); g.moveTo(0, top + rowH - 0.5); g.lineTo(w, top + rowH - 0.5); g.stroke();
      g.strokeStyle = s.colour;
      g.beginPath();
      // One point per pixel column at most: a minute at 50 Hz is 3,000 samples.
      let drawing = false;
      let column = -1;
      for (const p of this.samples) {
        const v = p[s.key];
        if (v == null) { drawing = false; continue; }
        const x = w - ((last - p.t) / SECONDS) * w;
        if (Math.floor(x) === column) continue;
        column = Math.floor(x);
        if (drawing) g.lineTo(x, y(v)); else g.moveTo(x, y(v));
        drawing = true;
      }
      g.stroke();
      const now = values.length ? values[values.length - 1] : null;
      g.fillStyle = "#ddd";
      g.font = `${Math.round(12 * ratio)}px system-ui, sans-serif`;
      const text = `${s.label}${now == null ? "" : ` ${now.toFixed(2)}`}  (${min.toFixed(1)} to ${max.toFixed(1)})`;
      g.fillText(text, 6 * ratio, top + 14 * ratio);
    });
  }
}
