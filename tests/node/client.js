// A WebSocket client built on the ws package, a peer wsplice did not write.
// It opens connections through wsplice, sends random text and binary
// messages with several in flight, checks that every echo equals what was
// sent, in order, and prints one line:
//
//   RESULT {"ok":true,"connections":4,"messages":400,"bytes":...,"backends":{...}}
//
// and exits 0, or prints RESULT {"ok":false,"error":"..."} and exits 1.
//
// Usage: node client.js --url ws://HOST:PORT/PATH [--connections 4]
//        [--messages 100] [--max-size 262144] [--window 8] [--timeout 60]
//        [--ca CA.pem]
//
// With a wss:// URL, --ca names the PEM file of the only CA trusted (Node's
// own TLS stack verifies the chain and the host name against it).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const WebSocket = require('ws');

function parseArgs(argv) {
  const opts = { url: '', connections: 4, messages: 100, maxSize: 256 << 10, window: 8, timeout: 60, ca: '' };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    switch (flag) {
      case '--url': opts.url = value; break;
      case '--connections': opts.connections = Number(value); break;
      case '--messages': opts.messages = Number(value); break;
      case '--max-size': opts.maxSize = Number(value); break;
      case '--window': opts.window = Number(value); break;
      case '--timeout': opts.timeout = Number(value); break;
      case '--ca': opts.ca = value; break;
      default: throw new Error(`unknown flag ${flag}`);
    }
  }
  if (!opts.url) throw new Error('--url is required');
  return opts;
}

// randomMessage returns a text message (random printable and non-ASCII
// characters) or a binary one, of a log-uniform size up to maxSize.
function randomMessage(maxSize) {
  const size = Math.max(1, Math.floor(Math.exp(Math.random() * Math.log(maxSize))));
  if (Math.random() < 0.5) {
    return { binary: true, data: crypto.randomBytes(size) };
  }
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789 éü✓';
  let s = '';
  for (let i = 0; i < size; i++) s += alphabet[Math.floor(Math.random() * alphabet.length)];
  return { binary: false, data: Buffer.from(s, 'utf8') };
}

// runConnection sends `count` messages with up to `window` unanswered and
// resolves with the backend's name and the bytes echoed.
function runConnection(id, opts) {
  return new Promise((resolve, reject) => {
    const wsOpts = { perMessageDeflate: false, maxPayload: 64 << 20 };
    if (opts.ca) wsOpts.ca = fs.readFileSync(opts.ca);
    const ws = new WebSocket(opts.url, wsOpts);
    const inFlight = [];
    let sent = 0;
    let received = 0;
    let bytes = 0;
    let backend = '';
    const fail = (err) => { ws.terminate(); reject(new Error(`connection ${id}: ${err.message || err}`)); };

    const fill = () => {
      while (sent < opts.count && inFlight.length < opts.window) {
        const m = randomMessage(opts.maxSize);
        inFlight.push(m);
        sent++;
        ws.send(m.binary ? m.data : m.data.toString('utf8'), { binary: m.binary });
      }
    };
    ws.on('upgrade', (res) => { backend = res.headers['x-backend-name'] || ''; });
    ws.on('open', fill);
    ws.on('message', (data, isBinary) => {
      const want = inFlight.shift();
      if (!want) return fail(new Error('echo of a message never sent'));
      if (isBinary !== want.binary || !Buffer.from(data).equals(want.data)) {
        return fail(new Error(`message ${received}: echo (binary=${isBinary}, ${data.length} bytes) differs from what was sent (binary=${want.binary}, ${want.data.length} bytes)`));
      }
      received++;
      bytes += want.data.length;
      if (received === opts.count) {
        ws.close(1000, 'done');
      } else {
        fill();
      }
    });
    ws.on('close', (code) => {
      if (received === opts.count && code === 1000) resolve({ backend, bytes });
      else fail(new Error(`closed with code ${code} after ${received} of ${opts.count} echoes`));
    });
    ws.on('error', fail);
  });
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const timer = setTimeout(() => {
    console.log('RESULT ' + JSON.stringify({ ok: false, error: `timeout after ${opts.timeout}s` }));
    process.exit(1);
  }, opts.timeout * 1000);

  const perConn = Math.ceil(opts.messages / opts.connections);
  const results = await Promise.all(
    Array.from({ length: opts.connections }, (_, i) => runConnection(i, { ...opts, count: perConn })));
  clearTimeout(timer);
  const backends = {};
  let bytes = 0;
  for (const r of results) {
    backends[r.backend] = (backends[r.backend] || 0) + 1;
    bytes += r.bytes;
  }
  console.log('RESULT ' + JSON.stringify({
    ok: true, connections: opts.connections, messages: perConn * opts.connections, bytes, backends,
  }));
}

main().catch((err) => {
  console.log('RESULT ' + JSON.stringify({ ok: false, error: err.message }));
  process.exit(1);
});
