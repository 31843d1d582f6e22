/**
 * Fake upstream servers that stop a login at a chosen step, for tests of what the proxy does
 * when the server misbehaves (they never log anyone in). Real logins use the RDS-like servers.
 */
import net from 'node:net';
import { AuthPlugin, buildGreeting, Cap, packet } from '../../src/engines/mysql/wire';

/** A MySQL Handshake v10 offering TLS and length-encoded auth data, as packet 0. */
export function mysqlGreetingPacket(serverVersion: string): Buffer {
  return packet(
    0,
    buildGreeting({
      serverVersion,
      connectionId: 1,
      scramble: Buffer.from('ABCDEFGHIJKLMNOPQRST'),
      capabilities:
        (Cap.PROTOCOL_41 |
          Cap.SSL |
          Cap.SECURE_CONNECTION |
          Cap.PLUGIN_AUTH |
          Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA) >>>
        0,
      mariadbCapabilities: 0,
      charset: 45,
      status: 2,
      authPlugin: AuthPlugin.NATIVE,
    }),
  );
}

/** A TCP server on 127.0.0.1 running `onConnection` per socket; close() destroys every socket. */
export async function fakeServer(
  onConnection: (s: net.Socket) => void,
): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    onConnection(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
