/**
 * What the RDS-like Postgres and MariaDB servers share: a temp dir, a fresh test CA with a server
 * certificate for the endpoint name, a token verifier bound to `endpoint:port`, and a PAM service
 * of its own (so a token for one server is refused by another), and a sweep that removes what a
 * killed test run left behind.
 */
import { constants as fsConstants, promises as fs } from 'node:fs';
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
  /** rds (default) or dsql: which token shape the verifier expects (service dsql, DbConnect[Admin], no port). */
  tokenKind?: 'rds' | 'dsql';
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

const WORK_PREFIX = 'rdsiam-';
const OWNER_FILE = 'owner.pid';
const PAM_SERVICE_FILE = 'pam-service';
/** Where each kind of server writes its pid, relative to its work dir, and how to stop it hard. */
const SERVER_PIDS = [
  { file: 'data/postmaster.pid', name: 'postgres', signal: 'SIGQUIT' },
  { file: 'run/mariadbd.pid', name: 'mariadbd', signal: 'SIGKILL' },
] as const;

/**
 * A fresh temp dir, 0755 root so the database user can reach the verifier socket and
 * certificates, stamped with this process's pid for `sweepStale`.
 */
export async function makeWorkDir(kind: string): Promise<string> {
  const root = await workRoot();
  await sweepStale(root);
  const dir = await fs.mkdtemp(path.join(root, `${WORK_PREFIX}${kind}-`));
  await fs.chmod(dir, 0o755);
  await fs.writeFile(path.join(dir, OWNER_FILE), String(process.pid));
  return dir;
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
};

/**
 * Removes servers, PAM services and dirs of test processes that died without stop() (a killed
 * jest worker runs no afterAll and no exit handler). A server's pid is only signalled if
 * /proc says it still is that server.
 */
async function sweepStale(root: string): Promise<void> {
  const read = (f: string): Promise<string> => fs.readFile(f, 'utf8').catch(() => '');
  for (const name of await fs.readdir(root).catch(() => [])) {
    if (!name.startsWith(WORK_PREFIX)) continue;
    const dir = path.join(root, name);
    const owner = Number(await read(path.join(dir, OWNER_FILE)));
    if (!(owner > 0) || alive(owner)) continue;
    for (const s of SERVER_PIDS) {
      const pid = Number((await read(path.join(dir, s.file))).split('\n')[0]);
      if (pid > 0 && (await read(`/proc/${pid}/cmdline`)).includes(s.name)) {
        try {
          process.kill(pid, s.signal);
        } catch {
          // already gone
        }
      }
    }
    const service = (await read(path.join(dir, PAM_SERVICE_FILE))).trim();
    if (/^rdsiam-test-[a-z0-9]+$/.test(service))
      await fs.rm(path.join('/etc/pam.d', service), { force: true });
    await fs.rm(dir, { recursive: true, force: true });
  }
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
    endpoint: o.tokenKind === 'dsql' ? endpoint : `${endpoint}:${port}`,
    region,
    keys,
    ...(o.tokenKind === 'dsql' ? { kind: 'dsql' as const, service: 'dsql' } : {}),
  });
  const pamService = `rdsiam-test-${uniqueSuffix()}`;
  await fs.writeFile(path.join(dir, PAM_SERVICE_FILE), pamService);
  let removePam: () => Promise<void>;
  try {
    removePam = await installPamService(pamService, verifier.socketPath);
  } catch (err) {
    await verifier.close();
    throw err;
  }
  return { dir, endpoint, region, keys, ca, caFile, server, pamService, verifier, removePam };
}

/** Quotes a SQL string literal; doubling backslashes too keeps it safe under MariaDB's escapes. */
export function sqlString(s: string, backslashEscapes: boolean): string {
  const body = backslashEscapes ? s.replace(/\\/g, '\\\\') : s;
  return `'${body.replace(/'/g, "''")}'`;
}
