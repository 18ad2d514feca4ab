// Test harness loaded into a page next to pushd.js: records what each
// subscription delivers, so a test can wait on it and compare.
"use strict";
window.T = {
  subs: {},
  start(key, base, channel, options, lib) {
    const rec = { messages: [], resets: [], states: [], sub: null };
    this.subs[key] = rec;
    const opts = Object.assign({ backoff: { initial: 100, max: 1000 } }, options || {}, {
      onMessage: (m) => rec.messages.push(m),
      onReset: (r) => rec.resets.push(r),
      onStatus: (s) => rec.states.push(s.state + ":" + s.transport),
    });
    rec.sub = (lib || window.pushd).subscribe(base, channel, opts);
    return key;
  },
  view(key) {
    const rec = this.subs[key];
    return {
      data: rec.messages.map((m) => m.data),
      ids: rec.messages.map((m) => m.id),
      messages: rec.messages,
      resets: rec.resets,
      states: rec.states,
      cursor: rec.sub.cursor,
      transport: rec.sub.transport,
      state: rec.sub.state,
      stats: Object.assign({}, rec.sub.stats),
    };
  },
  got(key, n) {
    const rec = this.subs[key];
    return !!rec && rec.messages.length >= n;
  },
  open(key) {
    const rec = this.subs[key];
    return !!rec && rec.sub.state === "open";
  },
};
