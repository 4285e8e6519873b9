// The Status view: live charts of /ws/metrics (a few minutes of history) and the
// connected clients of /ws/status (admins only).

import { $, el } from "./dom.js";
import { formatSize, formatTime } from "./tree.js";

const EVERY = 2000;
const KEEP = 150; // points: five minutes at one every two seconds

function drawChart(canvas, values, format) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const top = Math.max(1, ...values);
  context.strokeStyle = style.getPropertyValue("--line").trim() || "#ddd";
  context.beginPath();
  context.moveTo(0, height - 0.5);
  context.lineTo(width, height - 0.5);
  context.stroke();
  context.fillStyle = style.getPropertyValue("--muted").trim() || "#666";
  context.font = "11px system-ui, sans-serif";
  context.fillText(format(top), 4, 12);
  if (values.length < 2) return;
  const step = width / (KEEP - 1);
  const x0 = width - step * (values.length - 1);
  context.strokeStyle = style.getPropertyValue("--accent").trim() || "#2760c4";
  context.lineWidth = 1.5;
  context.beginPath();
  values.forEach((value, index) => {
    const x = x0 + index * step;
    const y = height - 2 - (value / top) * (height - 16);
    if (index === 0) context.moveTo(x, y);
    else context.lineTo(x, y);
  });
  context.stroke();
}

const count = (value) => (value >= 100 ? value.toFixed(0) : value.toFixed(1));

const SERIES = {
  connections: { format: (v) => String(Math.round(v)) },
  messages: { format: count },
  bytes: { format: (v) => `${formatSize(Math.round(v))}/s` },
  storage: { format: (v) => formatSize(v) },
};

export class Status {
  constructor(api, showError) {
    this.api = api;
    this.showError = showError;
    this.history = Object.fromEntries(Object.keys(SERIES).map((name) => [name, []]));
    this.previous = null;
    this.timer = null;
    this.visible = false;
    this.clientsAllowed = true;
  }

  // A new login: the clients table may be allowed now.
  reset() {
    this.clientsAllowed = true;
    $("clients-note").hidden = true;
  }

  start() {
    if (!this.timer) {
      this.sample();
      this.timer = setInterval(() => this.sample(), EVERY);
    }
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  show(visible) {
    this.visible = visible;
    if (visible) {
      this.draw();
      this.loadClients();
    }
  }

  async sample() {
    let figures;
    try {
      figures = await this.api.metrics();
    } catch (error) {
      return; // the connection indicator tells about an unreachable server
    }
    const now = performance.now();
    const previous = this.previous;
    this.previous = { at: now, figures };
    this.push("connections", figures.connections);
    this.push("storage", (figures.storage && figures.storage.used_space) || 0);
    if (previous) {
      const seconds = Math.max(0.001, (now - previous.at) / 1000);
      const messages = figures.messages_in + figures.messages_out
        - previous.figures.messages_in - previous.figures.messages_out;
      this.push("messages", Math.max(0, messages / seconds));
      this.push("bytes", Math.max(0, (figures.bytes_transferred - previous.figures.bytes_transferred) / seconds));
    }
    if (this.visible) {
      this.draw();
      this.loadClients();
    }
  }

  push(name, value) {
    const values = this.history[name];
    values.push(value);
    if (values.length > KEEP) values.shift();
  }

  draw() {
    for (const [name, { format }] of Object.entries(SERIES)) {
      const values = this.history[name];
      drawChart($(`chart-${name}`), values, format);
      $(`value-${name}`).textContent = values.length ? format(values[values.length - 1]) : "";
    }
  }

  async loadClients() {
    if (!this.clientsAllowed) return;
    let body;
    try {
      body = await this.api.clients();
    } catch (error) {
      if (error.status === 403 || error.status === 401) {
        this.clientsAllowed = false;
        $("clients-note").hidden = false;
        $("clients-note").textContent = `Connected clients: ${error.message}`;
      }
      return;
    }
    $("clients").replaceChildren(...body.clients.map((client) => el("tr", {}, [
      el("td", { text: client.client_id || "(no id)" }),
      el("td", { text: client.address }),
      el("td", { text: formatTime(client.connected_at) }),
      el("td", { text: formatTime(client.last_seen) }),
      el("td", { text: client.topics.join(", ") }),
    ])));
  }
}
