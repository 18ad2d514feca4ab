// The status page: charts of the daemon's numbers, fed over pushd itself.
"use strict";

const POINTS = 60; // one a second: the last minute
const series = { connections: [], published: [], deliveries: [], dropped: [] };
const sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);
const $ = (id) => document.getElementById(id);

function chart(id, values) {
  const max = Math.max(1, ...values);
  const points = values.map((v, i) => (POINTS - values.length + i) + "," + (100 - (v / max) * 96 - 2));
  $(id).querySelector("polyline").setAttribute("points", points.join(" "));
}

function push(name, value) {
  const s = series[name];
  s.push(value);
  if (s.length > POINTS) s.shift();
  chart("chart-" + name, s);
}

function show(st) {
  const table = $("connections");
  for (const t of pushd.transports) {
    let row = $("row-" + t);
    if (!row) {
      row = table.insertRow();
      row.id = "row-" + t;
      for (const cls of ["name", "open", "rate", "dropped", "resets"]) row.insertCell().className = cls;
      row.cells[0].textContent = t;
      row.cells[1].id = "conn-" + t;
    }
    row.cells[1].textContent = t === "poll" ? "–" : st.connections[t];
    row.cells[2].textContent = st.rates.deliveries[t];
    row.cells[3].textContent = st.dropped[t];
    row.cells[4].textContent = st.resets[t];
  }
  const connections = sum(st.connections);
  const deliveries = Math.round(sum(st.rates.deliveries) * 100) / 100;
  $("connections-total").textContent = connections;
  $("published-rate").textContent = st.rates.published;
  $("published-total").textContent = st.published.toLocaleString("en");
  $("delivery-rate").textContent = deliveries;
  $("dropped-total").textContent = sum(st.dropped);
  push("connections", connections);
  push("published", st.rates.published);
  push("deliveries", deliveries);
  push("dropped", sum(st.dropped));
}

// The last minute from history first, then live from its cursor: no gap, no repeat.
async function start() {
  let since = null;
  try {
    const r = await fetch("/channels/pushd.status/poll?limit=" + POINTS, { cache: "no-store" });
    const page = await r.json();
    for (const m of page.messages) if (m.event === "status") show(m.data);
    since = page.cursor;
  } catch (e) { /* start live */ }
  pushd.subscribe("", "pushd.status", {
    since,
    onMessage: (m) => { if (m.event === "status") show(m.data); },
    onStatus: (s) => { $("transport").textContent = s.transport + ", " + s.state; },
  });
}
start();
