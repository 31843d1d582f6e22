import pino, { type Logger } from 'pino';

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

export interface LogOptions {
  level: string;
  /** json: one JSON object per line; pretty: human-readable (needs a TTY-minded operator). */
  format: 'json' | 'pretty';
  /** Destination stream; stdout by default. Tests pass a collector. */
  destination?: NodeJS.WritableStream;
}

/** Creates the root logger. Errors are serialized with their message scrubbed of token shapes. */
export function createLogger(opts: LogOptions): Logger {
  const options: pino.LoggerOptions = {
    level: opts.level,
    base: { pid: process.pid },
    redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
    serializers: {
      err: (err: unknown) => {
        if (!(err instanceof Error)) return typeof err === 'string' ? scrubSecrets(err) : err;
        const s = pino.stdSerializers.err(err);
        return { ...s, message: scrubSecrets(String(s.message)), stack: s.stack && scrubSecrets(s.stack) };
      },
    },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (opts.format === 'pretty' && !opts.destination) {
    return pino({ ...options, transport: { target: 'pino-pretty', options: { colorize: true } } });
  }
  return pino(options, (opts.destination as pino.DestinationStream | undefined) ?? pino.destination(1));
}
