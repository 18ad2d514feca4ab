// pushd.core.js: the pushd browser client, one source for two wrappers.
// pushd/web/pages.py serves it as /pushd.js (a classic script that sets
// window.pushd) and /pushd.mjs (an ES module exporting `subscribe`); both
// wrap this text unchanged. No build step, no dependencies.
//
// The promise: a subscription keeps its cursor (the id of the last message
// delivered) across reconnects and transport fallbacks, so each message
// reaches onMessage once, in order, or onReset says some were lost.

const VERSION = "1";
const TRANSPORTS = ["ws", "sse", "stream", "longpoll", "poll"];
const STREAMING = ["ws", "sse", "stream"]; // one held connection that pushes
const POLL_LIMIT = 100; // messages per poll answer; a full page is polled again at once
const CATCH_UP_LIMIT = 1000; // history read when the cursor is "the channel was empty"
const LONGPOLL_TIMEOUT = 25; // seconds a long-poll is held

/** Full-jitter exponential backoff: a delay in [0, min(max, initial * 2^attempt)). */
function backoffDelay(attempt, initial, max, random) {
  const ceiling = Math.min(max, initial * Math.pow(2, Math.min(attempt, 30)));
  return Math.floor((random || Math.random)() * ceiling);
}

/** Splits a text stream into lines (LF or CRLF), whatever the chunking. */
class LineSplitter {
  constructor() {
    this.pending = [];
  }
  /** Complete lines in `chunk` (with what came before), without their ends. */
  push(chunk) {
    const lines = [];
    let start = 0;
    let nl;
    while ((nl = chunk.indexOf("\n", start)) !== -1) {
      let line = chunk.slice(start, nl);
      if (this.pending.length) {
        this.pending.push(line);
        line = this.pending.join("");
        this.pending = [];
      }
      lines.push(line.endsWith("\r") ? line.slice(0, -1) : line);
      start = nl + 1;
    }
    if (start < chunk.length) this.pending.push(chunk.slice(start));
    return lines;
  }
  /** The unterminated rest (an interrupted line), and a fresh start. */
  flush() {
    const rest = this.pending.join("");
    this.pending = [];
    return rest;
  }
}

function utf8Length(text) {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00) { n += 4; i++; }
    else n += 3;
  }
  return n;
}

function asMessage(o) {
  return { id: o.id, channel: o.channel, event: o.event, data: o.data, time: o.time };
}

function report(error) {
  // An exception in a user callback must not break the subscription.
  setTimeout(() => { throw error; }, 0);
}

// -- one connection attempt ---------------------------------------------------
// A Conn is handed to a transport; everything the transport sees goes
// through it, and once it has ended (or the subscription moved on) it
// ignores late events, so two transports never deliver at once.
class Conn {
  constructor(sub, transport) {
    this.sub = sub;
    this.transport = transport;
    this.active = true;
    this.isOpen = false;
    this.stopper = null; // the transport's close()
    this.held = null; // live messages kept back while a catch-up read runs
  }
  open() { if (this.active && !this.isOpen) { this.isOpen = true; this.sub._opened(this); } }
  bytes(n) { if (this.active) this.sub.stats.bytes += n; }
  message(m) {
    if (!this.active) return;
    if (this.held) this.held.push(m);
    else this.sub._deliver(m);
  }
  reset(cursor) { if (this.active) this.sub._reset(cursor); }
  channelClosed() { if (this.active) this.sub._channelClosed(this); }
  /** The connection is over; `clean` when the server ended it on purpose. */
  end(clean) { if (this.active) this.sub._ended(this, !!clean); }
  stop() {
    this.active = false;
    const stopper = this.stopper;
    this.stopper = null;
    if (stopper) { try { stopper(); } catch (e) { /* already gone */ } }
  }
}

// Frames of the WebSocket and NDJSON stream: {"type": "message" | "reset" | "closed", ...}.
// `renew`, when given, answers an "expired" frame instead of reconnecting.
function typedFrame(conn, text, renew) {
  let f;
  try { f = JSON.parse(text); } catch (e) { return; }
  if (!f || typeof f !== "object") return;
  if (f.type === "message") conn.message(asMessage(f));
  else if (f.type === "reset") conn.reset(f.cursor === undefined ? null : f.cursor);
  else if (f.type === "closed") conn.channelClosed();
  else if (f.type === "expired") {
    if (renew) renew();
    else conn.end(true); // back at once with a fresh token
  }
}

// A poll or long-poll answer: {"messages": [...], "cursor": C, "reset"?, "closed"?}.
function pollAnswer(conn, body) {
  if (body.reset) conn.reset(body.cursor === undefined ? null : body.cursor);
  for (const m of body.messages || []) conn.message(asMessage(m));
  if (body.closed) conn.channelClosed();
  else if (body.expired) conn.end(true); // back at once with a fresh token
}

async function fetchText(conn, url, init) {
  init = Object.assign({ cache: "no-store" }, init);
  const token = conn.sub._token;
  if (token !== null) {
    // fetch can send a header: the token stays out of URLs (and logs)
    init.headers = Object.assign({}, init.headers, { Authorization: "Bearer " + token });
  }
  const response = await fetch(url, init);
  if (response.status === 304) return { response, text: null };
  if (!response.ok) throw new Error("pushd: HTTP " + response.status);
  const text = await response.text();
  conn.bytes(utf8Length(text));
  return { response, text };
}

// -- transports: each opens one connection for `conn` and returns its close() --
const OPEN = {
  ws(sub, conn) {
    // A browser's WebSocket and EventSource cannot send headers: ?token=.
    const ws = new WebSocket(sub._url("ws", { since: sub.cursor, token: sub._token }, true));
    ws.onopen = () => conn.open();
    // An expired token is replaced on the open connection (an auth frame
    // within the server's grace): messages keep flowing, nothing reconnects.
    const renew = sub._getToken === null ? null : async () => {
      try {
        const token = await sub._getToken();
        if (!conn.active || ws.readyState !== WebSocket.OPEN) return;
        sub._token = token == null ? null : String(token);
        ws.send(JSON.stringify({ type: "auth", token: sub._token }));
      } catch (e) {
        conn.end(true); // no token now: reconnecting asks again
      }
    };
    ws.onmessage = (e) => {
      if (typeof e.data !== "string") return;
      conn.bytes(utf8Length(e.data));
      typedFrame(conn, e.data, renew);
    };
    // 4001: the token expired and no new one came in time; back with a fresh one
    ws.onclose = (e) => conn.end(e.code === 4001);
    return () => { ws.onclose = ws.onmessage = ws.onopen = null; ws.close(); };
  },

  sse(sub, conn) {
    // ?envelope=1: every message is the whole object, so id, event and time arrive.
    const es = new EventSource(
      sub._url("events", { envelope: 1, lastEventId: sub.cursor, token: sub._token }),
    );
    es.onopen = () => conn.open();
    es.onmessage = (e) => {
      conn.bytes(utf8Length(e.data));
      try { conn.message(asMessage(JSON.parse(e.data))); } catch (err) { /* not ours */ }
    };
    es.addEventListener("reset", (e) => {
      conn.bytes(utf8Length(e.data));
      let cursor = null;
      try { cursor = JSON.parse(e.data).cursor; } catch (err) { /* keep null */ }
      conn.reset(cursor === undefined ? null : cursor);
    });
    es.addEventListener("closed", () => conn.channelClosed());
    es.addEventListener("expired", () => { es.close(); conn.end(true); });
    // Reconnect ourselves (backoff, fallback, one cursor), not EventSource's way.
    es.onerror = () => { es.close(); conn.end(false); };
    return () => es.close();
  },

  stream(sub, conn) {
    const abort = new AbortController();
    (async () => {
      const headers = sub._token === null ? {} : { Authorization: "Bearer " + sub._token };
      const response = await fetch(sub._url("stream", { since: sub.cursor }), {
        cache: "no-store",
        headers,
        signal: abort.signal,
      });
      if (!response.ok || !response.body) throw new Error("pushd: HTTP " + response.status);
      conn.open();
      // A reader and a line splitter: the page holds one line at a time,
      // never the whole response (the old XHR-streaming leak).
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      const lines = new LineSplitter();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        conn.bytes(value.byteLength);
        for (const line of lines.push(decoder.decode(value, { stream: true }))) {
          if (line) typedFrame(conn, line); // a bare line is a heartbeat
        }
      }
      conn.end(true); // the server ended it (byte budget): resume at once
    })().catch(() => conn.end(false));
    return () => abort.abort();
  },

  longpoll(sub, conn) {
    const abort = new AbortController();
    (async () => {
      // The first request is a poll, answered at once: "open" does not wait
      // for a held request.
      if (!(await sub._position(conn, abort.signal))) await sub._replay(conn, abort.signal);
      conn.open();
      while (conn.active) {
        if (sub.cursor === null) {
          // "Since an empty channel" cannot be asked of a long-poll (without
          // `since` it waits for the next message only): wait for anything,
          // then read the whole history.
          await fetchText(conn, sub._url("longpoll", { timeout: LONGPOLL_TIMEOUT }), { signal: abort.signal });
          await sub._replay(conn, abort.signal);
          continue;
        }
        const url = sub._url("longpoll", { since: sub.cursor, timeout: LONGPOLL_TIMEOUT });
        const { text } = await fetchText(conn, url, { signal: abort.signal });
        pollAnswer(conn, JSON.parse(text));
      }
    })().catch(() => conn.end(false));
    return () => abort.abort();
  },

  poll(sub, conn) {
    const abort = new AbortController();
    let timer = null;
    let etag = null;
    let etagCursor;
    const once = async () => {
      timer = null;
      const headers = {};
      if (etag !== null && etagCursor === sub.cursor) headers["If-None-Match"] = etag;
      const url = sub._url("poll", { since: sub.cursor, limit: POLL_LIMIT });
      const { response, text } = await fetchText(conn, url, { headers, signal: abort.signal });
      let full = false;
      if (text !== null) {
        const body = JSON.parse(text);
        pollAnswer(conn, body);
        full = (body.messages || []).length >= POLL_LIMIT;
        etag = response.headers.get("ETag");
        etagCursor = sub.cursor;
      } // 304: nothing new
      conn.open();
      if (conn.active) timer = setTimeout(tick, full ? 0 : sub.pollInterval);
    };
    const tick = () => { once().catch(() => conn.end(false)); };
    (async () => {
      await sub._position(conn, abort.signal);
      tick();
    })().catch(() => conn.end(false));
    return () => { abort.abort(); if (timer !== null) clearTimeout(timer); };
  },
};

// -- the subscription ---------------------------------------------------------
class Subscription {
  constructor(baseUrl, channel, options) {
    options = options || {};
    const mode = options.transport || "auto";
    if (mode !== "auto" && TRANSPORTS.indexOf(mode) < 0) {
      throw new TypeError("pushd: unknown transport " + JSON.stringify(mode));
    }
    const here = typeof location !== "undefined" ? location.href : undefined;
    this.baseUrl = new URL(baseUrl || "/", here).href.replace(/\/+$/, "");
    this.channel = String(channel);
    /** The id of the last message delivered, or the cursor of the last reset. */
    this.cursor = options.since == null ? null : String(options.since);
    this.transport = null;
    this.state = "connecting";
    this.stats = { messages: 0, bytes: 0, reconnects: 0, resets: 0, failures: 0 };
    this.pollInterval = options.pollInterval > 0 ? options.pollInterval : 2000;
    // A token for channels that need one: a string, or getToken(), asked
    // before every connection (a reconnect, or after the token expired).
    this._token = typeof options.token === "string" ? options.token : null;
    this._getToken = typeof options.getToken === "function" ? options.getToken : null;
    const backoff = options.backoff || {};
    this._backoff = {
      initial: backoff.initial > 0 ? backoff.initial : 1000,
      max: backoff.max > 0 ? backoff.max : 30000,
      stable: backoff.stable >= 0 ? backoff.stable : 5000,
    };
    this._openTimeout = options.openTimeout > 0 ? options.openTimeout : 10000;
    this._handlers = {
      message: options.onMessage,
      reset: options.onReset,
      status: options.onStatus,
    };
    this._order = mode === "auto" ? TRANSPORTS.slice() : [mode];
    this._index = 0;
    this._settled = false; // auto: a transport has opened, keep it
    this._failedOpens = 0; // consecutive attempts that never opened
    this._attempt = 0; // backoff exponent
    this._known = this.cursor !== null; // the cursor is a position (null: channel was empty)
    this._conn = null;
    this._timers = new Set();
    this._closed = false;
    this._everOpened = false;
    queueMicrotask(() => this._connect());
  }

  /** End the subscription; no callback runs after this. */
  close() {
    if (this._closed) return;
    this._stopConn();
    this._closed = true;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    this._setState("closed", true);
  }

  /** Drop the current connection and resume from the cursor (as a network failure would). */
  reconnect() {
    if (this._closed || this._conn === null) return;
    const conn = this._conn;
    const opened = conn.isOpen;
    this._stopConn();
    this._afterEnd(opened, false);
  }

  // -- internals shared by the transports -------------------------------------
  _url(path, params, websocket) {
    let url = this.baseUrl + "/channels/" + encodeURIComponent(this.channel) + "/" + path;
    const query = [];
    for (const key of Object.keys(params || {})) {
      const value = params[key];
      if (value !== null && value !== undefined) {
        query.push(encodeURIComponent(key) + "=" + encodeURIComponent(value));
      }
    }
    if (query.length) url += "?" + query.join("&");
    return websocket ? url.replace(/^http/, "ws") : url;
  }

  /** A live start asks for the channel's current position first; true if it did. */
  async _position(conn, signal) {
    if (this._known) return false;
    const { text } = await fetchText(conn, this._url("poll", { limit: 1 }), { signal });
    if (!conn.active) return false;
    const cursor = JSON.parse(text).cursor;
    this.cursor = cursor === undefined ? null : cursor;
    this._known = true;
    return true;
  }

  /** Deliver what follows the cursor now; a null cursor (the channel was
   *  empty) means the whole history, which only a poll can ask for. */
  async _replay(conn, signal) {
    const url = this._url("poll", { since: this.cursor, limit: CATCH_UP_LIMIT });
    const { text } = await fetchText(conn, url, { signal });
    if (conn.active) pollAnswer(conn, JSON.parse(text));
  }

  /** A stream opened live because the cursor is null ("the channel was
   *  empty"): there is no `since` for that, and a message published between
   *  reading the position and the stream subscribing would be lost. Now that
   *  the stream is subscribed, read the whole history: its messages go first,
   *  then the live ones that came meanwhile and were not in it. */
  async _catchUp(conn) {
    conn.held = [];
    try {
      const { text } = await fetchText(conn, this._url("poll", { limit: CATCH_UP_LIMIT }));
      if (!conn.active) return;
      const held = conn.held;
      conn.held = null;
      const body = JSON.parse(text);
      const seen = new Set();
      for (const m of body.messages || []) {
        seen.add(m.id);
        conn.message(asMessage(m));
      }
      for (const m of held) if (!seen.has(m.id)) conn.message(m);
    } catch (e) {
      conn.end(false);
    }
  }

  _connect() {
    if (this._closed) return;
    const name = this._order[this._index];
    this.transport = name;
    this._setState(this._everOpened ? "reconnecting" : "connecting");
    const conn = new Conn(this, name);
    this._conn = conn;
    const openTimer = this._later(() => {
      if (conn.active && !conn.isOpen) { this._stopConn(); this._afterEnd(false, false); }
    }, this._openTimeout);
    conn.openTimer = openTimer;
    const start = async () => {
      if (this._getToken !== null) {
        const token = await this._getToken();
        if (!conn.active) return;
        this._token = token == null ? null : String(token);
      }
      if (STREAMING.includes(name)) {
        // Subscribing without `since` would lose what is published while
        // reconnecting: learn the position first (still null for an empty
        // channel: then _opened catches up once the stream is subscribed).
        await this._position(conn);
      }
      if (conn.active) conn.stopper = OPEN[name](this, conn);
    };
    start().catch(() => conn.end(false));
  }

  _opened(conn) {
    this._clearTimer(conn.openTimer);
    this._everOpened = true;
    this._settled = true;
    this._failedOpens = 0;
    conn.stableTimer = this._later(() => { this._attempt = 0; }, this._backoff.stable);
    this._setState("open");
    if (this.cursor === null && STREAMING.includes(conn.transport)) this._catchUp(conn);
  }

  _ended(conn, clean) {
    const opened = conn.isOpen;
    this._stopConn();
    this._afterEnd(opened, clean);
  }

  _stopConn() {
    const conn = this._conn;
    if (conn === null) return;
    this._conn = null;
    this._clearTimer(conn.openTimer);
    this._clearTimer(conn.stableTimer);
    conn.stop();
  }

  _afterEnd(opened, clean) {
    if (this._closed) return;
    let delay;
    if (opened) {
      this.stats.reconnects += 1;
      this._failedOpens = 0;
      delay = clean ? 0 : this._nextDelay();
    } else {
      this.stats.failures += 1;
      this._failedOpens += 1;
      if (this._order.length > 1 && (!this._settled || this._failedOpens >= 3)) {
        // auto: this transport cannot open here; try the next one, and
        // start over (after a backoff) once every one has failed.
        this._settled = false;
        this._failedOpens = 0;
        this._index = (this._index + 1) % this._order.length;
        delay = this._index === 0 ? this._nextDelay() : 0;
      } else {
        delay = this._nextDelay();
      }
    }
    if (this._everOpened) this._setState("reconnecting");
    this._later(() => this._connect(), delay);
  }

  _nextDelay() {
    const b = this._backoff;
    return backoffDelay(this._attempt++, b.initial, b.max);
  }

  _later(fn, ms) {
    const t = setTimeout(() => { this._timers.delete(t); fn(); }, ms);
    this._timers.add(t);
    return t;
  }

  _clearTimer(t) {
    if (t !== undefined && t !== null) { clearTimeout(t); this._timers.delete(t); }
  }

  _deliver(m) {
    if (this._closed || m.id === this.cursor) return; // a replayed duplicate
    this.cursor = m.id;
    this._known = true;
    this.stats.messages += 1;
    this._call("message", m);
  }

  _reset(cursor) {
    if (this._closed) return;
    this.cursor = cursor;
    this._known = true;
    this.stats.resets += 1;
    this._call("reset", { channel: this.channel, cursor });
  }

  _channelClosed() {
    this.close(); // the channel was deleted: the subscription ends
  }

  _setState(state, force) {
    if (this._closed && !force) return;
    if (state === this.state && this.transport === this._reported) return;
    this.state = state;
    this._reported = this.transport;
    this._call("status", { state, transport: this.transport });
  }

  _call(name, arg) {
    const fn = this._handlers[name];
    if (typeof fn !== "function") return;
    try { fn(arg); } catch (e) { report(e); }
  }
}

/** Subscribe to `channel` of the pushd daemon at `baseUrl`; see pushd.d.ts. */
function subscribe(baseUrl, channel, options) {
  return new Subscription(baseUrl, channel, options);
}

const pushd = {
  subscribe,
  version: VERSION,
  transports: TRANSPORTS.slice(),
  // For tests of the pieces; not part of the API.
  _internal: { backoffDelay, LineSplitter, utf8Length },
};
