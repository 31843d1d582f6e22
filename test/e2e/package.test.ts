/**
 * The package as users get it: a clean copy of the repository (the tracked files, no dist, no
 * build) is packed with `npm pack` (prepack builds), the tarball is installed with
 * `npm install -g --prefix`, and the installed bin runs `--help`, `check` on the shipped example
 * and `run`, through which psql logs in to the RDS-like PostgreSQL. `require()` of the package is
 * the library entry and starts nothing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startRdsLikePostgres, type RdsLikePg } from '../harness/pg';
import { psql, runProgram, type ProcResult } from '../harness/clients';
import { LONG_SESSION_TOKEN } from '../harness/proxy';
import { TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY } from '../harness/sign';
import { freePort } from '../harness/util';
import { version } from '../../package.json';

const ROOT = path.resolve(__dirname, '../..');
/** node and npm of this test run first on PATH: the bin's `#!/usr/bin/env node` finds node there. */
const PATH = `${path.dirname(process.execPath)}:${process.env['PATH'] ?? ''}`;

/** The SDK's default chain reads these, as on a host with temporary credentials. */
const CREDS = {
  AWS_ACCESS_KEY_ID: TEST_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY: TEST_SECRET_ACCESS_KEY,
  AWS_SESSION_TOKEN: LONG_SESSION_TOKEN,
};

let tmp: string;
let tarball: string;
let entries: string[];
let prefix: string;
let bin: string;
let installed: string;

async function ok(cmd: string, args: string[], cwd?: string): Promise<ProcResult> {
  const r = await runProgram(cmd, cwd ? ['-C', cwd, ...args] : args, { env: { PATH }, timeoutMs: 300_000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r;
}

/** npm in a directory (npm has no -C; `--prefix` would mean something else for pack). */
function npm(args: string[], cwd: string): Promise<ProcResult> {
  return ok('sh', ['-c', 'cd "$0" && exec npm "$@"', cwd, ...args]);
}

beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'rip-package-'));
  // A clean clone: the files git tracks or would track (not ignored), as in the working tree;
  // no dist/ and no node_modules of its own, so packing must build.
  const clone = path.join(tmp, 'clone');
  const files = (
    await ok('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], ROOT)
  ).stdout
    .split('\0')
    .filter(Boolean);
  for (const f of files) {
    if (!existsSync(path.join(ROOT, f))) continue; // deleted in the working tree
    mkdirSync(path.dirname(path.join(clone, f)), { recursive: true });
    copyFileSync(path.join(ROOT, f), path.join(clone, f));
  }
  symlinkSync(path.join(ROOT, 'node_modules'), path.join(clone, 'node_modules'));
  expect(existsSync(path.join(clone, 'dist'))).toBe(false);

  const out = path.join(tmp, 'out');
  mkdirSync(out);
  const t0 = Date.now();
  await npm(['pack', '--pack-destination', out], clone);
  const packMs = Date.now() - t0;
  const tgz = readdirSync(out).filter((f) => f.endsWith('.tgz'));
  expect(tgz).toEqual([`rds-iam-proxy-${version}.tgz`]);
  tarball = path.join(out, tgz[0] as string);
  entries = (await ok('tar', ['-tzf', tarball])).stdout
    .split('\n')
    .filter(Boolean)
    .map((e) => e.replace(/^package\//, ''));

  prefix = path.join(tmp, 'prefix');
  await npm(
    ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', tarball],
    tmp,
  );
  console.log(`npm pack (with build) ${packMs} ms, npm install -g ${Date.now() - t0 - packMs} ms`);
  bin = path.join(prefix, 'bin', 'rds-iam-proxy');
  installed = path.join(prefix, 'lib', 'node_modules', 'rds-iam-proxy');
}, 600_000);

afterAll(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('the tarball holds what runs and the documents, and no test, bench or harness code', () => {
  for (const f of [
    'package.json',
    'README.md',
    'LICENSE',
    'config.example.yaml',
    'deploy/systemd/rds-iam-proxy.service',
    'dist/package.json',
    'dist/src/cli.js',
    'dist/src/index.js',
    'dist/src/index.d.ts',
    'dist/src/engines/postgres/index.js',
    'dist/src/engines/mysql/index.js',
  ]) {
    expect(entries).toContain(f);
  }
  const outside = entries.filter((e) => !e.startsWith('dist/src/'));
  expect(outside.sort()).toEqual(
    [
      'LICENSE',
      'README.md',
      'config.example.yaml',
      'deploy/systemd/rds-iam-proxy.service',
      'dist/package.json',
      'package.json',
    ].sort(),
  );
  expect(
    entries.filter((e) => /(^|\/)(test|bench|harness)(\/|$)|\.map$|\.ts$/.test(e) && !e.endsWith('.d.ts')),
  ).toEqual([]);
});

test('LICENSE is the Apache License 2.0 text', async () => {
  const text = (await ok('tar', ['-xzOf', tarball, 'package/LICENSE'])).stdout;
  expect(text).toMatch(/Apache License\s+Version 2\.0, January 2004/);
  expect(text).toMatch(/TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION/);
  expect(text).toMatch(/END OF TERMS AND CONDITIONS/);
});

test('the installed bin: --help, -v, and check on the shipped example config', async () => {
  const help = await ok(bin, ['run', '--help']);
  for (const flag of [
    '--port',
    '--address',
    '--unix-socket',
    '--region',
    '--ca',
    '--client-tls',
    '--admin',
    '--quiet',
  ])
    expect(help.stdout).toContain(flag);
  const top = await ok(bin, ['--help']);
  for (const cmd of ['run', 'check', 'wait', 'shutdown', 'token', 'doctor'])
    expect(top.stdout).toMatch(new RegExp(`^  ${cmd}\\b`, 'm'));
  expect((await ok(bin, ['-v'])).stdout.trim()).toBe(version);
  const check = await ok(bin, ['check', '--config', path.join(installed, 'config.example.yaml')]);
  expect(check.stdout).toMatch(/^config OK: \d+ listener/);
});

test('require() gives the library entry and starts nothing', async () => {
  const r = await ok(process.execPath, [
    '-e',
    `const m = require(${JSON.stringify(installed)}); process.stdout.write(JSON.stringify(Object.keys(m).sort()))`,
  ]);
  const keys = JSON.parse(r.stdout) as string[];
  expect(keys).toEqual(
    expect.arrayContaining(['loadConfig', 'urlLayer', 'Runtime', 'createLogger', 'VERSION']),
  );
});

describe('run from the installed bin', () => {
  let db: RdsLikePg;
  let proc: ChildProcess | undefined;

  beforeAll(async () => {
    db = await startRdsLikePostgres();
  });
  afterAll(async () => {
    if (proc && proc.exitCode === null) proc.kill('SIGKILL');
    await db?.stop();
  });

  test('psql logs in through a one-line start, and SIGTERM exits 0', async () => {
    const port = await freePort();
    const url = `postgres://alice@${db.host}:${db.port}/appdb?dial=127.0.0.1&ca=${encodeURIComponent(db.caFile)}`;
    proc = spawn(bin, ['run', url, '--port', String(port), '--client-tls', 'off'], {
      env: { ...process.env, PATH, ...CREDS },
    });
    await waitForStdout(proc, /rds-iam-proxy ready/);
    const r = await psql(`host=127.0.0.1 port=${port} dbname=appdb sslmode=disable`, [
      '-c',
      'select current_user',
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('alice');
    const exited = new Promise((resolve) => proc?.on('exit', resolve));
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});

/** Resolves when a line of the child's stdout matches; rejects when it exits first. */
function waitForStdout(child: ChildProcess, re: RegExp): Promise<void> {
  let out = '';
  return new Promise((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (re.test(out)) resolve();
    });
    child.on('exit', (code) => reject(new Error(`exited ${code} before ${re}: ${out}`)));
  });
}
