/**
 * Builds and installs the test PAM module. Both live in root-owned places nobody else can write:
 * under MariaDB the module is loaded by the setuid-root auth_pam_tool, so a writable module or
 * directory would be a local root hole on the test machine.
 */
import { createHash } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { requireRoot, run } from './util';

/** Root of everything the harness installs system-wide; 0755 root:root. */
export const HARNESS_LIB_DIR = '/usr/local/lib/rds-iam-proxy-test';
// The C source is not copied by tsc: from dist/test/harness, look in the source tree.
const SOURCE =
  [
    path.join(__dirname, 'pam', 'pam_rdsiam.c'),
    path.resolve(__dirname, '../../../test/harness/pam/pam_rdsiam.c'),
  ].find((p) => existsSync(p)) ?? path.join(__dirname, 'pam', 'pam_rdsiam.c');
const PAM_HEADER = '/usr/include/security/pam_modules.h';
const HINT = 'needs root and libpam0g-dev: apt-get install -y libpam0g-dev gcc';

/** Creates `dir` if needed and forces it to root:root 0755 whatever it was. */
export async function ensureRootDir(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o755 });
  await fs.chown(dir, 0, 0);
  await fs.chmod(dir, 0o755);
}

/**
 * Compiles pam_rdsiam.c unless a build of the same source exists, and returns the module's
 * absolute path. The source hash is in the file name, so parallel workers never see a half
 * written module and an old build is never mistaken for the current one.
 */
export async function ensurePamModule(): Promise<string> {
  requireRoot('the PAM test module');
  const source = await fs.readFile(SOURCE);
  const hash = createHash('sha256').update(source).digest('hex').slice(0, 16);
  const target = path.join(HARNESS_LIB_DIR, `pam_rdsiam-${hash}.so`);
  if (
    await fs.stat(target).then(
      () => true,
      () => false,
    )
  )
    return target;

  await fs.access(PAM_HEADER).catch(() => {
    throw new Error(`cannot build the PAM module: ${PAM_HEADER} missing; ${HINT}`);
  });
  await ensureRootDir(HARNESS_LIB_DIR);
  const tmp = `${target}.${process.pid}.tmp`;
  try {
    await run('gcc', ['-shared', '-fPIC', '-O2', '-Wall', '-o', tmp, SOURCE, '-lpam']);
  } catch (err) {
    throw new Error(`cannot build the PAM module (${HINT}): ${(err as Error).message}`);
  }
  await fs.chmod(tmp, 0o644);
  await fs.rename(tmp, target);
  return target;
}

/**
 * Writes /etc/pam.d/<name> running the module against the verifier at `socketPath`. The account
 * line is required: without it PAM's account phase fails and valid tokens are refused.
 * Returns a function that removes the file.
 */
export async function installPamService(name: string, socketPath: string): Promise<() => Promise<void>> {
  requireRoot('installing a PAM service');
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new Error(`bad PAM service name: ${name}`);
  if (!path.isAbsolute(socketPath) || /\s/.test(socketPath))
    throw new Error(`bad socket path: ${socketPath}`);
  const module = await ensurePamModule();
  const file = path.join('/etc/pam.d', name);
  await fs.writeFile(
    file,
    `# rds-iam-proxy test harness; removed when the test database stops\n` +
      `auth required ${module} socket=${socketPath}\n` +
      `account required pam_permit.so\n`,
    { mode: 0o644 },
  );
  return () => fs.rm(file, { force: true });
}
