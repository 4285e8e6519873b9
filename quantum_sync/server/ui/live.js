// The page's WebSocket to /ws: authenticates with the `auth` message (the token never
// goes into the URL), subscribes to file_operations, reconnects with exponential backoff.
// States: "live", "reconnecting", "offline".

const FIRST_DELAY = 500;
const MAX_DELAY = 10000;
const PING_EVERY = 20000;

// Milliseconds before reconnect attempt `attempt` (0, 1, ...): doubling from FIRST_DELAY
// up to MAX_DELAY, spread by ±20 % (`random` in [0, 1)) so that pages do not come back
// all at once.
export function retryDelay(attempt, random = Math.random()) {
  return Math.min(MAX_DELAY, FIRST_DELAY * 2 ** attempt) * (0.8 + random * 0.4);
}

export class Live {
  // handlers: onState(state, detail), onOpen() after each (re)subscription,
  // onOperation(message), onAuth(data), onAuthError(message)
  constructor(api, handlers) {
    this.api = api;
    this.handlers = handlers;
    this.socket = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.stopped = true;
    this.state = "offline";
    this.subscribed = false;
    window.addEventListener("online", () => this.online());
    window.addEventListener("offline", () => this.setState("offline", "the browser is offline"));
  }

  // Back online: a connection that stayed open is live again; a lost one is made anew.
  online() {
    if (this.stopped) return;
    if (!this.socket) this.connect();
    else if (this.subscribed && this.socket.readyState === WebSocket.OPEN) {
      this.setState("live");
      this.handlers.onOpen(); // catch up with whatever did not come through meanwhile
    }
  }

  setState(state, detail = "") {
    this.state = state;
    this.handlers.onState(state, detail);
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    if (this.socket) this.socket.close(1000, "bye");
    this.socket = null;
    this.setState("offline");
  }

  connect() {
    clearTimeout(this.retryTimer);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/ws`);
    this.socket = socket;
    this.subscribed = false;
    socket.onopen = () => {
      if (this.api.token) {
        this.send({ type: "auth", payload: { token: this.api.token } });
      } else {
        this.subscribe();
      }
    };
    socket.onmessage = (event) => this.received(event.data);
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      clearInterval(this.pingTimer);
      if (!this.stopped) this.retry();
    };
  }

  retry() {
    if (!navigator.onLine) {
      this.setState("offline", "the browser is offline");
      return;
    }
    const delay = retryDelay(this.attempt);
    this.attempt++;
    this.setState("reconnecting", `next try in ${(delay / 1000).toFixed(1)} s`);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  // A renewed token: tell the open connection.
  reauthenticate() {
    if (this.socket && this.socket.readyState === WebSocket.OPEN && this.api.token) {
      this.send({ type: "auth", payload: { token: this.api.token }, id: "renew" });
    }
  }

  subscribe() {
    this.send({ type: "subscribe", topic: "file_operations", id: "live" });
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  received(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch (e) {
      return;
    }
    switch (message.type) {
      case "auth_success":
        this.handlers.onAuth(message.data || {});
        if (message.id !== "renew") this.subscribe();
        break;
      case "auth_error":
        this.stopped = true;
        this.setState("offline", message.message || "authentication failed");
        this.handlers.onAuthError(message);
        break;
      case "Ack":
        if (message.id === "live") {
          this.attempt = 0;
          this.subscribed = true;
          this.setState("live");
          clearInterval(this.pingTimer);
          this.pingTimer = setInterval(() => this.send({ type: "Ping" }), PING_EVERY);
          this.handlers.onOpen();
        }
        break;
      case "FileOperation":
        this.handlers.onOperation(message);
        break;
      default:
        break;
    }
  }
}
