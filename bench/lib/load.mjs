// A small closed-loop HTTP/1.1 load generator for Unix sockets: N keep-alive connections, each sending
// one GET and waiting for the whole answer before the next. Latency per request is taken with
// process.hrtime.bigint (microseconds, unlike autocannon's whole milliseconds) and kept exactly, so
// the percentiles are exact. Used by bench/socket.mjs for both servers, in the same run.
import net from 'node:net';

/**
 * @param {{ socketPath: string, path: string, connections: number, seconds: number }} o
 * @returns {Promise<{ requests: number, rps: number, p50: number, p99: number, max: number, errors: number }>} latencies in ms
 */
export function load({ socketPath, path, connections, seconds }) {
  const request = Buffer.from(`GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`);
  const latencies = [];
  let errors = 0;
  const end = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));
  const started = process.hrtime.bigint();
  const one = () =>
    new Promise((resolve) => {
      const sock = net.connect(socketPath);
      let buf = Buffer.alloc(0);
      let sent = 0n;
      const send = () => {
        if (process.hrtime.bigint() >= end) {
          sock.end();
          resolve();
          return;
        }
        sent = process.hrtime.bigint();
        sock.write(request);
      };
      sock.on('connect', send);
      sock.on('error', () => {
        errors++;
        resolve();
      });
      sock.on('data', (chunk) => {
        buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
        for (;;) {
          const head = buf.indexOf('\r\n\r\n');
          if (head < 0) return;
          const headers = buf.subarray(0, head).toString('latin1');
          const m = /\r\ncontent-length: *(\d+)/i.exec(headers);
          const total = head + 4 + (m ? Number(m[1]) : 0);
          if (buf.length < total) return;
          if (!headers.startsWith('HTTP/1.1 200')) errors++;
          latencies.push(Number(process.hrtime.bigint() - sent) / 1e6);
          buf = buf.subarray(total);
          send();
        }
      });
    });
  return Promise.all(Array.from({ length: connections }, one)).then(() => {
    const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
    latencies.sort((a, b) => a - b);
    const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? NaN;
    return {
      requests: latencies.length,
      rps: latencies.length / elapsed,
      p50: q(0.5),
      p99: q(0.99),
      max: latencies.at(-1) ?? NaN,
      errors,
    };
  });
}
