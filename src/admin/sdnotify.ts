/**
 * systemd readiness (sd_notify) for `Type=notify` units: READY=1 once every listener is bound,
 * RELOADING=1 / READY=1 around a SIGHUP reload, STOPPING=1 when a drain starts.
 *
 * The protocol is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or '@name'
 * in the abstract namespace). Node cannot open AF_UNIX datagram sockets (node:dgram is UDP only),
 * and the npm bindings are native addons that need libsystemd headers to build, so this runs
 * `systemd-notify`, which ships with systemd wherever a unit can run. It speaks both socket forms,
 * and (systemd >= 246) waits until the manager has processed the message before exiting, so a
 * message from this short-lived child is still attributed to the unit. The unit therefore needs
 * `NotifyAccess=all` (the sender is a child, not the main PID).
 *
 * Without $NOTIFY_SOCKET (not started by systemd) every call is a no-op.
 */
import { execFile } from 'node:child_process';

/** What a notification did: sent, skipped (no $NOTIFY_SOCKET), or failed (with the reason). */
export type NotifyResult = { sent: true } | { sent: false; reason: string };

export interface SdNotifyOptions {
  /** Environment holding NOTIFY_SOCKET (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** The systemd-notify binary (default: found on PATH; SYSTEMD_NOTIFY_BIN overrides). */
  bin?: string;
  /** Give up after this many milliseconds (default 10 s; systemd-notify waits for the manager). */
  timeoutMs?: number;
}

/**
 * Sends `fields` (e.g. `['READY=1', 'STATUS=listening']`) to the service manager. Never throws:
 * readiness is best effort, and the caller logs a failure.
 */
export function sdNotify(fields: string[], opts: SdNotifyOptions = {}): Promise<NotifyResult> {
  const env = opts.env ?? process.env;
  const socket = env['NOTIFY_SOCKET'];
  if (!socket) return Promise.resolve({ sent: false, reason: 'NOTIFY_SOCKET is not set' });
  const bin = opts.bin ?? env['SYSTEMD_NOTIFY_BIN'] ?? 'systemd-notify';
  return new Promise((resolve) => {
    execFile(
      bin,
      fields,
      { env: { ...env, NOTIFY_SOCKET: socket }, timeout: opts.timeoutMs ?? 10_000, encoding: 'utf8' },
      (err, _stdout, stderr) => {
        if (!err) return resolve({ sent: true });
        const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? `${bin} not found` : err.message;
        resolve({ sent: false, reason: `${why}${stderr ? `: ${stderr.trim()}` : ''}` });
      },
    );
  });
}

/** Minimal logger surface (pino's). */
interface WarnLogger {
  warn(obj: object, msg: string): void;
}

/**
 * Sends notifications one after another, in call order (RELOADING=1 must not overtake the READY=1
 * that ends it), and logs failures once the unit expects them (NOTIFY_SOCKET set).
 */
export class SystemdNotifier {
  private queue: Promise<void> = Promise.resolve();

  constructor(
    private readonly log: WarnLogger,
    private readonly opts: SdNotifyOptions = {},
  ) {}

  /** Queues `fields`; the promise resolves once they were sent (or failed). */
  notify(...fields: string[]): Promise<void> {
    this.queue = this.queue
      .then(() => sdNotify(fields, this.opts))
      .then((r) => {
        if (!r.sent && (this.opts.env ?? process.env)['NOTIFY_SOCKET'])
          this.log.warn({ fields, reason: r.reason }, 'could not notify systemd (sd_notify)');
      });
    return this.queue;
  }

  /** Resolves when every queued notification is out, or after `maxWaitMs` (before the process exits). */
  flush(maxWaitMs = 2000): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, maxWaitMs);
      timer.unref();
      void this.queue.then(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
