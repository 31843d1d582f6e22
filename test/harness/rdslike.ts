/**
 * What the RDS-like Postgres and MariaDB servers share: a temp dir, a fresh test CA with a server
 * certificate for the endpoint name, a token verifier bound to `endpoint:port`, and a PAM service
 * of its own (so a token for one server is refused by another), plus cleanup at process exit in
 * case a test run dies before its afterAll.
 */
import { constants as fsConstants, promises as fs, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createCA, issueCert, type Pem } from '../../src/net/certs';
import { installPamService } from './pam';
import { TEST_KEYS } from './sign';
import { uniqueSuffix } from './util';
import { startVerifier, type Verifier } from './verifier';

export interface RdsLikeOptions {
  /** DNS name the server certificate and tokens are for; it need not resolve (clients dial `address`). */
  endpoint?: string;
  /** Default 'us-east-1'. */
  region?: string;
  /** IAM users to create (login only with a valid token). Default ['alice']. */
  users?: string[];
  /** Users with a password login instead (SCRAM on Postgres, mysql_native_password on MariaDB). */
  passwordUsers?: Record<string, string>;
  /** accessKeyId -> secret the verifier accepts. Default TEST_KEYS from sign.ts. */
  keys?: Record<string, string>;
}

/** A running RDS-like server. Dial `address:port`, verify TLS against `caPem` for the name `host`. */
export interface RdsLikeServer {
  /** The endpoint name: TLS servername and the host tokens are signed for. */
  host: string;
  address: '127.0.0.1';
  port: number;
  region: string;
  caPem: string;
  caFile: string;
  verifier: Verifier;
  keys: Record<string, string>;
  dataDir: string;
  /** Directory of the server's own unix socket. */
  socketDir: string;
  stop(): Promise<void>;
}

export const DEFAULT_REGION = 'us-east-1';

/** Pieces prepared before the database itself starts. */
export interface Prepared {
  dir: string;
  endpoint: string;
  region: string;
  keys: Record<string, string>;
  ca: Pem;
  caFile: string;
  server: Pem;
  pamService: string;
  verifier: Verifier;
  removePam: () => Promise<void>;
}

/**
 * Where throwaway servers live: RDSIAM_TEST_TMPDIR, else /dev/shm when usable, else the OS temp
 * dir. tmpfs matters here: on this VM's disk initdb takes ~1.4 s of system time, on tmpfs ~0.35 s.
 */
async function workRoot(): Promise<string> {
  const env = process.env.RDSIAM_TEST_TMPDIR;
  if (env) return env;
  const usable = await fs.access('/dev/shm', fsConstants.W_OK | fsConstants.X_OK).then(
    () => true,
    () => false,
  );
  return usable ? '/dev/shm' : os.tmpdir();
}

/** A fresh temp dir, 0755 root so the database user can reach the verifier socket and certificates. */
export async function makeWorkDir(prefix: string): Promise<string> {
  const dir = await fs.mkdtemp(path.join(await workRoot(), prefix));
  await fs.chmod(dir, 0o755);
  return dir;
}

/** Certificates, verifier and PAM service for a server that will listen on `port`. */
export async function prepare(
  dir: string,
  port: number,
  o: RdsLikeOptions,
  defaultEndpoint: string,
): Promise<Prepared> {
  const endpoint = o.endpoint ?? defaultEndpoint;
  const region = o.region ?? DEFAULT_REGION;
  const keys = { ...(o.keys ?? TEST_KEYS) };
  const ca = createCA('rds-iam-proxy test CA');
  const server = issueCert(ca, { commonName: endpoint, dnsNames: [endpoint] });
  const caFile = path.join(dir, 'ca.pem');
  await fs.writeFile(caFile, ca.cert, { mode: 0o644 });
  const verifier = await startVerifier({
    socketPath: path.join(dir, 'verifier.sock'),
    endpoint: `${endpoint}:${port}`,
    region,
    keys,
  });
  const pamService = `rdsiam-test-${uniqueSuffix()}`;
  let removePam: () => Promise<void>;
  try {
    removePam = await installPamService(pamService, verifier.socketPath);
  } catch (err) {
    await verifier.close();
    throw err;
  }
  return { dir, endpoint, region, keys, ca, caFile, server, pamService, verifier, removePam };
}

/** Best-effort synchronous cleanups run if the process exits with servers still up. */
const exitCleanups = new Set<() => void>();
process.on('exit', () => {
  for (const fn of exitCleanups) {
    try {
      fn();
    } catch {
      // exiting anyway
    }
  }
});

/** Registers `fn` to run at process exit; returns the unregister function. */
export function atExit(fn: () => void): () => void {
  exitCleanups.add(fn);
  return () => exitCleanups.delete(fn);
}

/** Synchronous removal of what `prepare` made (for exit hooks only, where async work cannot run). */
export function removePreparedSync(p: Prepared): void {
  rmSync(path.join('/etc/pam.d', p.pamService), { force: true });
  rmSync(p.dir, { recursive: true, force: true });
}

/** Quotes a SQL string literal; doubling backslashes too keeps it safe under MariaDB's escapes. */
export function sqlString(s: string, backslashEscapes: boolean): string {
  const body = backslashEscapes ? s.replace(/\\/g, '\\\\') : s;
  return `'${body.replace(/'/g, "''")}'`;
}
