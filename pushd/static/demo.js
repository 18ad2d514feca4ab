// The demo page: one pushd.js subscription per transport on one channel.
"use strict";

const KINDS = {
  ws: "WebSocket: one connection, frames both ways",
  sse: "Server-Sent Events: EventSource, resumes by id",
  stream: "HTTP stream: fetch + ReadableStream, NDJSON lines",
  longpoll: "Long-polling: a held request per answer",
  poll: "Polling: a request every second, 304 when nothing is new",
};
const KEEP = 12; // messages shown per pane

const panes = document.getElementById("panes");
let subscriptions = [];

function text(data) {
  return typeof data === "string" ? data : JSON.stringify(data);
}

function pane(transport, channel) {
  const node = document.getElementById("pane").content.firstElementChild.cloneNode(true);
  node.id = "pane-" + transport;
  node.dataset.transport = transport;
  const $ = (cls) => node.querySelector("." + cls);
  $("name").textContent = transport;
  $("what").textContent = KINDS[transport];
  const log = $("log");
  const latencies = [];
  let sub = null;
  const refresh = () => {
    $("bytes").textContent = sub.stats.bytes.toLocaleString("en");
    $("reconnects").textContent = sub.stats.reconnects;
    $("resets").textContent = sub.stats.resets;
    $("messages").textContent = sub.stats.messages;
  };
  const line = (cls, content) => {
    const li = document.createElement("li");
    li.className = cls;
    li.textContent = content;
    log.prepend(li);
    while (log.children.length > KEEP) log.lastChild.remove();
  };
  sub = pushd.subscribe("", channel, {
    transport,
    pollInterval: 1000,
    onMessage(m) {
      const latency = Date.now() - m.time;
      latencies.push(latency);
      if (latencies.length > 20) latencies.shift();
      const mean = latencies.reduce((a, b) => a + b, 0) / latencies.length;
      $("latency").textContent = latency + " ms (avg " + Math.round(mean) + ")";
      line("message", (m.event !== "message" ? m.event + " " : "") + text(m.data));
      refresh();
    },
    onReset(r) {
      line("reset", "reset: some messages were lost; now at " + r.cursor);
      refresh();
    },
    onStatus(s) {
      $("state").textContent = s.state;
      node.dataset.state = s.state;
      refresh();
    },
  });
  $("drop").addEventListener("click", () => sub.reconnect());
  panes.append(node);
  return sub;
}

function follow(channel) {
  for (const sub of subscriptions) sub.close();
  panes.replaceChildren();
  subscriptions = pushd.transports.map((t) => pane(t, channel));
}

const channelInput = document.getElementById("channel");
document.getElementById("channel-form").addEventListener("submit", (e) => {
  e.preventDefault();
  follow(channelInput.value);
});

document.getElementById("publish-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const raw = document.getElementById("publish-data").value;
  const out = document.getElementById("publish-result");
  let type = "text/plain; charset=utf-8";
  try { JSON.parse(raw); type = "application/json"; } catch (err) { /* text */ }
  const url = "/channels/" + encodeURIComponent(channelInput.value);
  try {
    const r = await fetch(url, { method: "POST", headers: { "Content-Type": type }, body: raw });
    const body = await r.json();
    out.textContent = r.ok ? "published " + body.id + " to " + body.subscribers + " subscribers"
                           : "error: " + body.message;
  } catch (err) {
    out.textContent = "error: " + err.message;
  }
});

follow(channelInput.value);
