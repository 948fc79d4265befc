// A raw byte-stream client over Node's tls module, a TLS implementation
// wsplice did not write, for wsplice's L4 TLS listener (--listen-tcp-tls).
// Each connection does its TLS handshake trusting only --ca, then asks the
// echo backend behind the splice for its raw mode (an Upgrade to PATH,
// normally /?raw=1), writes random chunks of random sizes with several in
// flight, checks that the echoed stream equals what was written, and ends
// with a half-close that the backend's echo answers with its own. It prints
// one line:
//
//   RESULT {"ok":true,"connections":4,"messages":400,"bytes":...,"backends":{...}}
//
// and exits 0, or prints RESULT {"ok":false,"error":"..."} and exits 1.
//
// Usage: node tls-raw-client.js --url tls://HOST:PORT/PATH --ca CA.pem
//        [--connections 4] [--messages 100] [--max-size 262144] [--window 8]
//        [--timeout 60]
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const tls = require('node:tls');

function parseArgs(argv) {
  const opts = { url: '', ca: '', connections: 4, messages: 100, maxSize: 256 << 10, window: 8, timeout: 60 };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    switch (flag) {
      case '--url': opts.url = value; break;
      case '--ca': opts.ca = value; break;
      case '--connections': opts.connections = Number(value); break;
      case '--messages': opts.messages = Number(value); break;
      case '--max-size': opts.maxSize = Number(value); break;
      case '--window': opts.window = Number(value); break;
      case '--timeout': opts.timeout = Number(value); break;
      default: throw new Error(`unknown flag ${flag}`);
    }
  }
  if (!opts.url || !opts.ca) throw new Error('--url and --ca are required');
  const u = new URL(opts.url);
  if (u.protocol !== 'tls:') throw new Error('--url must be tls://HOST:PORT/PATH');
  opts.host = u.hostname;
  opts.port = Number(u.port);
  opts.path = u.pathname + u.search;
  opts.caPEM = fs.readFileSync(opts.ca);
  return opts;
}

function randomChunk(maxSize) {
  const size = Math.max(1, Math.floor(Math.exp(Math.random() * Math.log(maxSize))));
  return crypto.randomBytes(size);
}

// runConnection resolves with the backend's name and the bytes echoed.
function runConnection(id, opts) {
  return new Promise((resolve, reject) => {
    const tlsOpts = { host: opts.host, port: opts.port, ca: opts.caPEM };
    // SNI may not be an IP address; the certificate's IP SAN is checked
    // all the same.
    if (!net.isIP(opts.host)) tlsOpts.servername = opts.host;
    const sock = tls.connect(tlsOpts);
    const key = crypto.randomBytes(16).toString('base64');
    const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
    let head = Buffer.alloc(0);
    let upgraded = false;
    let backend = '';
    const pending = []; // chunks written, not yet fully echoed
    let pendingOff = 0; // bytes of pending[0] already echoed
    let sent = 0;
    let echoed = 0;
    let bytes = 0;
    let ended = false;
    const fail = (err) => { sock.destroy(); reject(new Error(`connection ${id}: ${err.message || err}`)); };

    const fill = () => {
      while (sent < opts.count && pending.length < opts.window) {
        const c = randomChunk(opts.maxSize);
        pending.push(c);
        sent++;
        sock.write(c);
      }
    };
    const compare = (data) => {
      let off = 0;
      while (off < data.length) {
        const want = pending[0];
        if (!want) return fail(new Error(`${data.length - off} bytes echoed beyond what was written`));
        const n = Math.min(want.length - pendingOff, data.length - off);
        if (!data.subarray(off, off + n).equals(want.subarray(pendingOff, pendingOff + n))) {
          return fail(new Error(`echoed stream differs from what was written in chunk ${echoed}, from its byte ${pendingOff}`));
        }
        off += n;
        pendingOff += n;
        bytes += n;
        if (pendingOff === want.length) {
          pending.shift();
          pendingOff = 0;
          echoed++;
        }
      }
      if (echoed === opts.count && !ended) {
        ended = true;
        sock.end(); // the echo half-closes in turn
      } else {
        fill();
      }
    };

    sock.on('secureConnect', () => {
      if (sock.alpnProtocol) return fail(new Error(`ALPN ${sock.alpnProtocol} on an L4 listener`));
      sock.write(`GET ${opts.path} HTTP/1.1\r\nHost: ${opts.host}:${opts.port}\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    });
    sock.on('data', (data) => {
      if (upgraded) return compare(data);
      head = Buffer.concat([head, data]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      const lines = head.subarray(0, end).toString('latin1').split('\r\n');
      if (!lines[0].startsWith('HTTP/1.1 101')) return fail(new Error(`upgrade answered ${lines[0]}`));
      const headers = {};
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      if (headers['sec-websocket-accept'] !== accept) return fail(new Error('bad Sec-WebSocket-Accept'));
      backend = headers['x-backend-name'] || '';
      upgraded = true;
      const rest = head.subarray(end + 4);
      fill();
      if (rest.length > 0) compare(rest);
    });
    sock.on('end', () => {
      if (echoed === opts.count) resolve({ backend, bytes });
      else fail(new Error(`closed by the server after ${echoed} of ${opts.count} chunks echoed`));
    });
    sock.on('error', fail);
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
