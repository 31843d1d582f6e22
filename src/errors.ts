/**
 * The proxy's error vocabulary. Each engine maps a code to its protocol's own error
 * (Postgres SQLSTATE, MySQL errno + SQLSTATE), so every failure before the splice reaches the
 * client in a form its driver understands. Messages are written for the operator reading the
 * client's error: they name the cause and the fix, and never contain a token or password.
 */
export const ErrorCode = {
  /** Upstream TCP connect failed or timed out. */
  UpstreamUnreachable: 'UPSTREAM_UNREACHABLE',
  /** Upstream refused TLS, or its certificate failed verification. */
  UpstreamTls: 'UPSTREAM_TLS',
  /** Upstream refused the login; `serverError` holds its own message. */
  UpstreamAuth: 'UPSTREAM_AUTH',
  /** Upstream sent something the proxy cannot follow during the handshake. */
  UpstreamProtocol: 'UPSTREAM_PROTOCOL',
  /** No credentials / token could be produced. */
  Credentials: 'CREDENTIALS',
  /** The client's password was wrong or missing (client.auth: password). */
  ClientAuth: 'CLIENT_AUTH',
  /** The client sent a malformed, oversized or unsupported message. */
  ClientProtocol: 'CLIENT_PROTOCOL',
  /** The client went away mid-handshake (a TCP health check, a killed app); nothing to send. */
  ClientGone: 'CLIENT_GONE',
  /**
   * The client's first bytes do not frame the protocol's first message (node-postgres sends
   * Terminate when it connects and ends at once); closed without a reply, as the server does.
   */
  ClientUnframed: 'CLIENT_UNFRAMED',
  /** The client did not finish its handshake in time. */
  HandshakeTimeout: 'HANDSHAKE_TIMEOUT',
  /** A connection limit was reached. */
  TooManyConnections: 'TOO_MANY_CONNECTIONS',
  /** The proxy is shutting down. */
  Shutdown: 'SHUTDOWN',
  /** Invalid configuration. */
  Config: 'CONFIG',
  /** A bug: logged in full, sent to the client only as a generic message. */
  Internal: 'INTERNAL',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * An error in the protocol's own terms: one the upstream server sent (kept so the client sees
 * the server's own words), or one the proxy words as that server would (a name too long).
 */
export interface ServerError {
  /** Postgres SQLSTATE or MySQL SQLSTATE. */
  sqlState?: string;
  /** MySQL error number. */
  errno?: number;
  message: string;
  /** Postgres ErrorResponse fields by their one-letter code, to relay them verbatim. */
  fields?: Map<string, string>;
}

export class ProxyError extends Error {
  readonly code: ErrorCode;
  /** What the operator should do; appended to the client-visible message. */
  readonly hint: string | undefined;
  readonly serverError: ServerError | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    opts: { hint?: string; cause?: unknown; serverError?: ServerError } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'ProxyError';
    this.code = code;
    this.hint = opts.hint;
    this.serverError = opts.serverError;
  }
}

/** Which leg of a connection: the app (client) or the database (server). */
export type PeerSide = 'client' | 'server';

/** A handshake peer closed or errored before the bytes asked for arrived. */
export class PeerClosedError extends Error {
  constructor(
    readonly side: PeerSide,
    cause?: unknown,
  ) {
    super(
      `${side === 'client' ? 'client' : 'upstream'} closed the connection during the handshake`,
      cause === undefined ? undefined : { cause },
    );
    this.name = 'PeerClosedError';
  }
}

/** A handshake peer sent more unread bytes than the proxy is willing to hold. */
export class BufferLimitError extends Error {
  constructor(limit: number) {
    super(`peer sent more than ${limit} bytes ahead of the handshake`);
    this.name = 'BufferLimitError';
  }
}

/**
 * A SCRAM-SHA-256 exchange failed. `proof`: the password (or the server's signature) did not
 * match; otherwise a message was malformed or unsupported.
 */
export class ScramError extends Error {
  constructor(
    message: string,
    readonly kind: 'proof' | 'protocol',
  ) {
    super(message);
    this.name = 'ScramError';
  }
}

/** Wraps anything thrown into a ProxyError; unknown errors become Internal (logged, not sent raw). */
export function asProxyError(err: unknown): ProxyError {
  if (err instanceof ProxyError) return err;
  if (err instanceof PeerClosedError) {
    return new ProxyError(
      err.side === 'server' ? ErrorCode.UpstreamUnreachable : ErrorCode.ClientGone,
      err.message,
      { cause: err },
    );
  }
  return new ProxyError(ErrorCode.Internal, 'internal proxy error; see the proxy log', { cause: err });
}

/** An error as log fields: `err: {code, message, hint, serverCode, stack}`. */
export interface LoggedError {
  code: ErrorCode;
  message: string;
  hint?: string;
  /** The server's SQLSTATE or MySQL errno, or the socket errno of the cause (ECONNREFUSED). */
  serverCode?: string;
  /** Internal errors only: the cause's stack, for a bug report. */
  stack?: string;
}

/**
 * `err` for a log line: the message stays out of `msg`, so each event has one fixed `msg` and
 * lines group by `err.code`. The logger scrubs token shapes from message and stack.
 */
export function logError(err: unknown): LoggedError {
  const e = asProxyError(err);
  const se = e.serverError;
  const cause = e.cause as { code?: unknown; stack?: unknown } | undefined;
  const serverCode =
    se?.sqlState ??
    (se?.errno !== undefined ? String(se.errno) : typeof cause?.code === 'string' ? cause.code : undefined);
  return {
    code: e.code,
    message: e.message,
    ...(e.hint ? { hint: e.hint } : {}),
    ...(serverCode ? { serverCode } : {}),
    ...(e.code === ErrorCode.Internal && typeof cause?.stack === 'string' ? { stack: cause.stack } : {}),
  };
}

/** True for failures the client gets no message for: it is gone, or the server would close silently. */
export function closesSilently(err: ProxyError): boolean {
  return err.code === ErrorCode.ClientGone || err.code === ErrorCode.ClientUnframed;
}

/** Process exit codes, in one place (sysexits-style where one fits). */
export const ExitCode = {
  Ok: 0,
  /** Runtime failure (a listener could not bind, doctor found a failing step). */
  Failure: 1,
  /** Bad command line. */
  Usage: 64,
  /** Invalid configuration. */
  Config: 78,
  /** Terminated by SIGTERM when shutdown.exitCode143 is set. */
  Sigterm: 143,
} as const;
