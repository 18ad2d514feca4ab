// The Node.js baseline: the classic Express SSE pattern. Each channel keeps
// an array of open responses; a publish writes the event to each in turn.
// Usage: node server.js PORT
'use strict';
const express = require('express');

const app = express();
const channels = new Map(); // channel -> array of responses
let nextId = 0;

app.get('/events/:ch', (req, res) => {
  res.writeHead(200, {
    'Content-Type': 'text/event-stream',
    'Cache-Control': 'no-cache',
    'Connection': 'keep-alive',
  });
  res.write('retry: 3000\n\n');
  const ch = req.params.ch;
  let clients = channels.get(ch);
  if (!clients) channels.set(ch, (clients = []));
  clients.push(res);
  req.on('close', () => {
    const i = clients.indexOf(res);
    if (i !== -1) clients.splice(i, 1);
    if (clients.length === 0) channels.delete(ch);
  });
});

app.post('/pub/:ch', express.text({ type: '*/*', limit: '64kb' }), (req, res) => {
  const clients = channels.get(req.params.ch) || [];
  const frame = `id: ${++nextId}\ndata: ${req.body}\n\n`;
  clients.forEach((c) => c.write(frame));
  res.status(201).json({ id: nextId, subscribers: clients.length });
});

app.get('/healthz', (req, res) => res.send('ok'));

const server = app.listen(Number(process.argv[2] || 8090), '127.0.0.1');
server.keepAliveTimeout = 0;
server.headersTimeout = 0;
server.requestTimeout = 0;
server.maxRequestsPerSocket = 0;
process.on('SIGTERM', () => process.exit(0));
