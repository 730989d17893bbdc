/** A TCP proxy in front of a server, for tests where a connection must be lost at a chosen moment. */
import net from 'node:net';
import type { Test } from 'tap';

export interface LossyProxy {
  /** The port the proxy listens on (127.0.0.1). */
  readonly port: number;
  /**
   * Forwards the client's next message holding `text`, then drops the server's answer and, shortly
   * after, the connection: the server acts on the message, the client never hears of it.
   */
  cutAfter(text: string): void;
}

/** A proxy to 127.0.0.1:`port` that loses an answer when told (see cutAfter); closed when `t` ends. */
export async function lossyProxy(t: Test, port: number): Promise<LossyProxy> {
  let trigger: Buffer | undefined;
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    let cut = false;
    upstream.on('data', (d) => {
      if (!cut) client.write(d);
    });
    client.on('data', (d) => {
      upstream.write(d);
      if (trigger && d.includes(trigger)) {
        trigger = undefined;
        cut = true;
        setTimeout(() => client.destroy(), 300);
      }
    });
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.end());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return {
    port: (server.address() as net.AddressInfo).port,
    cutAfter: (text) => {
      trigger = Buffer.from(text);
    },
  };
}
