import os from 'node:os';
import pino, { type Logger } from 'pino';
import { version as packageVersion } from '../package.json';

export type { Logger };

/**
 * Paths pino censors wherever they appear. This is a second line of defence: secrets are never
 * passed to a logger on purpose, but a stray object (a config, an SDK error carrying a request)
 * must not leak one either.
 */
export const REDACT_PATHS = [
  'password',
  'token',
  'secret',
  'sessionToken',
  'secretAccessKey',
  'credentials',
  '*.password',
  '*.token',
  '*.secret',
  '*.sessionToken',
  '*.secretAccessKey',
  '*.credentials',
  '*.*.password',
  '*.*.token',
  'err.config',
  'err.$response',
];

/** Matches an IAM auth token or a presigned query anywhere in a string. */
const TOKEN_RE = /[^\s"'/]*\/\?Action=[^\s"']*|X-Amz-(?:Signature|Security-Token|Credential)=[^\s&"']*/g;

/** Removes anything shaped like a presigned token from free text (error messages from libraries). */
export function scrubSecrets(text: string): string {
  return text.replace(TOKEN_RE, '[REDACTED]');
}

/** pino's error serializer, with token shapes scrubbed; error-like objects are treated alike. */
function serializeError(err: unknown): unknown {
  if (typeof err === 'string') return scrubSecrets(err);
  if (typeof err !== 'object' || err === null) return err;
  const e = err as { message?: unknown; stack?: unknown };
  if (!(err instanceof Error) && typeof e.message !== 'string') return err;
  const s = err instanceof Error ? pino.stdSerializers.err(err) : { ...(err as Record<string, unknown>) };
  return {
    ...s,
    message: scrubSecrets(String(s['message' as keyof typeof s] ?? '')),
    ...(typeof s['stack' as keyof typeof s] === 'string'
      ? { stack: scrubSecrets(s['stack' as keyof typeof s] as string) }
      : {}),
  };
}

export interface LogOptions {
  level: string;
  /** json: one JSON object per line; pretty: human-readable (needs a TTY-minded operator). */
  format: 'json' | 'pretty';
  /** Destination stream; stdout by default. Tests pass a collector. */
  destination?: NodeJS.WritableStream;
  /** `version` on every line; the package's version by default. */
  version?: string;
}

/** `service` on every line, so a log pipeline can select this proxy's lines among others. */
export const LOG_SERVICE = 'rds-iam-proxy';

/**
 * Creates the root logger. Every line carries `level` as a name ("info", not 30), `service`,
 * `version`, `hostname` and `pid`. Errors are serialized with their message scrubbed of token shapes.
 */
export function createLogger(opts: LogOptions): Logger {
  const options: pino.LoggerOptions = {
    level: opts.level,
    base: {
      service: LOG_SERVICE,
      version: opts.version ?? packageVersion,
      hostname: os.hostname(),
      pid: process.pid,
    },
    // Names, not pino's numbers: queries read `level="warn"` without a lookup table.
    formatters: { level: (label) => ({ level: label }) },
    redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
    serializers: {
      err: serializeError,
    },
    timestamp: pino.stdTimeFunctions.isoTime,
    hooks: {
      // pino copies a logged Error's message into `msg` unserialized; scrub every string argument.
      logMethod(args, method) {
        const a = args as unknown[];
        if (a[0] instanceof Error && a.length === 1) a.splice(0, 1, { err: a[0] }, a[0].message);
        const first = a[0] as { err?: unknown } | undefined;
        if (a.length === 1 && typeof first === 'object' && first?.err instanceof Error)
          a.push(first.err.message);
        method.apply(
          this,
          a.map((x) => (typeof x === 'string' ? scrubSecrets(x) : x)) as Parameters<typeof method>,
        );
      },
    },
  };
  if (opts.format === 'pretty' && !opts.destination) {
    return pino({
      ...options,
      transport: {
        target: 'pino-pretty',
        // A terminal reader knows which host and program this is.
        options: { colorize: true, ignore: 'service,version,hostname,pid' },
      },
    });
  }
  return pino(options, (opts.destination as pino.DestinationStream | undefined) ?? pino.destination(1));
}

/** What a connection's code logs with: the level methods and late bindings of a pino logger. */
export type ConnectionLogger = Pick<Logger, 'debug' | 'info' | 'warn' | 'error' | 'setBindings'>;

/**
 * A connection's logger: `root.child(bindings())`, made on its first call at a level `root`
 * has enabled, so a connection nothing is logged for (log.level warn and a clean login) pays
 * for no child and no bindings; the levels follow `root`'s.
 */
export function lazyChild(root: Logger, bindings: () => pino.Bindings): ConnectionLogger {
  let child: Logger | undefined;
  let late: pino.Bindings | undefined;
  const made = (): Logger => {
    child ??= root.child(late ? { ...bindings(), ...late } : bindings());
    return child;
  };
  const level = (name: 'debug' | 'info' | 'warn' | 'error'): pino.LogFn =>
    ((...args: unknown[]): void => {
      if (!root.isLevelEnabled(name)) return;
      const c = made();
      (c[name] as (...a: unknown[]) => void).apply(c, args);
    }) as pino.LogFn;
  return {
    debug: level('debug'),
    info: level('info'),
    warn: level('warn'),
    error: level('error'),
    setBindings(b) {
      if (child) child.setBindings(b);
      else late = { ...late, ...b };
    },
  };
}
