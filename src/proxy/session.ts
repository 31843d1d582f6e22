import type net from 'node:net';
import type { Logger } from '../log';
import { asProxyError, ErrorCode, ProxyError } from '../errors';
import type { Engine } from './engine';
import { splice } from './splice';

let nextId = 1;

export interface SessionOptions {
  listener: string;
  handshakeTimeoutMs: number;
}

/** Outcome of one connection, for logs and metrics. */
export interface SessionResult {
  outcome: 'spliced' | 'handled' | 'failed';
  errorCode?: ErrorCode;
}

/**
 * The path of one connection: handshake (engine), then splice. The handshake has a deadline;
 * on expiry the engine sends its protocol's error. Logs one line when accepted, one when logged
 * in (with phase timings) and one when closed (bytes, duration, reason). Owns `client`.
 */
export async function runSession(
  client: net.Socket,
  engine: Engine,
  rootLog: Logger,
  opts: SessionOptions,
): Promise<SessionResult> {
  const started = performance.now();
  const log = rootLog.child({
    connId: nextId++,
    listener: opts.listener,
    remote: client.remoteAddress ? `${client.remoteAddress}:${client.remotePort}` : 'unix',
  });
  client.setNoDelay(true);
  log.debug('accepted');
  const conn = engine.accept(client, log);
  const timer = setTimeout(
    () =>
      conn.abort(
        new ProxyError(ErrorCode.HandshakeTimeout, `handshake not completed within ${opts.handshakeTimeoutMs} ms`, {
          hint: 'the client stalled, or the upstream or credentials provider is slow; see the proxy log',
        }),
      ),
    opts.handshakeTimeoutMs,
  );
  let result;
  try {
    result = await conn.run();
  } catch (err) {
    const e = asProxyError(err);
    const level = e.code === ErrorCode.Internal ? 'error' : 'warn';
    log[level](
      { ...conn.info, code: e.code, err: e.code === ErrorCode.Internal ? e.cause : undefined, ms: elapsed(started) },
      `handshake failed: ${e.message}`,
    );
    return { outcome: 'failed', errorCode: e.code };
  } finally {
    clearTimeout(timer);
  }
  if (!result) {
    log.debug({ ms: elapsed(started) }, 'request handled');
    return { outcome: 'handled' };
  }
  log.info({ ...conn.info, timings: conn.timings, ms: elapsed(started) }, 'logged in');
  const { downstream, upstream } = result;
  const end = await splice(downstream, upstream, result.downstreamLeftover, result.upstreamLeftover);
  result.onClose?.();
  log.info(
    {
      bytesFromClient: client.bytesRead,
      bytesToClient: client.bytesWritten,
      durationMs: elapsed(started),
      reason: end.reason,
    },
    'closed',
  );
  return { outcome: 'spliced' };
}

function elapsed(t0: number): number {
  return Math.round((performance.now() - t0) * 10) / 10;
}
