import dns from 'node:dns/promises';
import net from 'node:net';
import type { Config, Listener } from '../config/schema';
import { upstreamPort } from '../config/load';
import { CredentialsHub } from '../credentials/hub';
import { buildCredentialSource, describeSource } from '../credentials/providers';
import { credentialsError, tokenRequestFor } from '../credentials/tokens';
import { refusedLoginCauses } from '../credentials/hints';
import { readSecret } from '../config/secrets';
import { asProxyError, ErrorCode, ProxyError } from '../errors';
import type { Logger } from '../log';
import { loadUpstreamCa, tcpDialer, upstreamTargetFor } from '../net/dial';
import { probeUpstream as postgresProbe } from '../engines/postgres';
import { probeUpstream as mysqlProbe } from '../engines/mysql';
import type { ProbeSession, UpstreamProbe } from '../proxy/engine';

/** Each engine's own check of its upstream: doctor knows no protocol. */
const PROBES: Record<Listener['engine'], UpstreamProbe> = { postgres: postgresProbe, mysql: mysqlProbe };

/** One line of the report. */
export interface DoctorStep {
  listener: string;
  step: 'config' | 'credentials' | 'token' | 'clock' | 'dns' | 'tcp' | 'tls' | 'login';
  status: 'ok' | 'fail' | 'warn' | 'skip';
  detail: string;
  /** Likely causes and the fix, on failure. */
  causes?: string[];
  fix?: string;
}

export interface DoctorOptions {
  /** User to log in as when the listener has no fixed upstream.user. */
  user?: string;
  database?: string;
  log: Logger;
}

/**
 * Walks every step a login takes, for each listener, and says which one fails and why:
 * credentials, token, clock skew, DNS, TCP, TLS (chain and name), and a real login.
 * Returns the steps; the caller prints them and exits 0 only when none failed.
 */
export async function runDoctor(cfg: Config, o: DoctorOptions): Promise<DoctorStep[]> {
  const steps: DoctorStep[] = [];
  const hub = new CredentialsHub(cfg, { log: o.log });
  try {
    for (const l of cfg.listeners) steps.push(...(await checkListener(l, cfg, hub, o)));
  } finally {
    hub.close();
  }
  return steps;
}

async function checkListener(
  l: Listener,
  cfg: Config,
  hub: CredentialsHub,
  o: DoctorOptions,
): Promise<DoctorStep[]> {
  const out: DoctorStep[] = [];
  const add = (s: Omit<DoctorStep, 'listener'>): boolean => {
    out.push({ listener: l.name, ...s });
    return s.status !== 'fail';
  };
  const host = l.upstream.host;
  const port = upstreamPort(l);
  const user = l.upstream.user ?? o.user;
  add({
    step: 'config',
    status: 'ok',
    detail: `${l.engine} ${host}:${port}${l.upstream.address ? ` via ${l.upstream.address}` : ''}, auth ${l.auth.mode}`,
  });

  // Credentials and token
  let secret: string | undefined;
  if (l.auth.mode === 'password') {
    try {
      secret = readSecret(l.auth.password as NonNullable<Listener['auth']['password']>);
      add({ step: 'credentials', status: 'ok', detail: 'static password readable' });
    } catch (err) {
      add({
        step: 'credentials',
        status: 'fail',
        detail: asProxyError(err).message,
        fix: 'set the environment variable or file named by auth.password',
      });
    }
  } else {
    const aws = hub.awsFor(l);
    try {
      const creds = await buildCredentialSource(aws)();
      const exp = creds.expiration
        ? `, expire ${creds.expiration.toISOString()} (in ${Math.round((creds.expiration.getTime() - Date.now()) / 60000)} min)`
        : ', no expiry';
      add({
        step: 'credentials',
        status: 'ok',
        detail: `from ${describeSource(creds)}${aws.roleArn ? ` assuming ${aws.roleArn}` : ''}${exp}`,
      });
      const tokenUser = user ?? '(any)';
      secret = await hub.sourceFor(l).lease(tokenRequestFor(l, user ?? 'doctor')).secret;
      add({
        step: 'token',
        status: 'ok',
        detail: `${l.auth.mode === 'dsql' ? 'DSQL' : 'RDS IAM'} token minted for ${host}:${port} user ${tokenUser}, region ${l.auth.region} (${secret.length} bytes)`,
      });
    } catch (err) {
      const e = err instanceof ProxyError ? err : credentialsError(err);
      add({
        step: 'credentials',
        status: 'fail',
        detail: e.message,
        causes: [
          'no credential source is configured on this host (no AWS_ACCESS_KEY_ID, profile, web identity file, container endpoint, or instance role)',
          'IMDS is unreachable: in a container the IMDSv2 hop limit must be 2 or more (aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2)',
          'STS is unreachable: in an air-gapped VPC set aws.stsEndpoint to the STS interface endpoint',
        ],
        fix: e.hint ?? 'configure one credential source',
      });
    }
  }

  // Clock skew, from whatever AWS calls were just made
  const skew = hub.skew.latest();
  if (skew) {
    const bad = Math.abs(skew.offsetSeconds) > cfg.tokens.clockSkewWarnSeconds;
    add({
      step: 'clock',
      status: bad ? 'warn' : 'ok',
      detail: `host clock ${skew.offsetSeconds >= 0 ? '+' : ''}${skew.offsetSeconds} s versus ${skew.source}`,
      ...(bad
        ? {
            causes: ['NTP is not running or not synchronised'],
            fix: 'enable chrony with the Amazon Time Sync Service (169.254.169.123)',
          }
        : {}),
    });
  } else {
    add({
      step: 'clock',
      status: 'skip',
      detail: 'not measured: no AWS HTTP call was made (credentials came from a file or the environment)',
    });
  }

  // DNS, for the address dialled (upstream.address may carry a tunnel's port)
  const target = upstreamTargetFor(l, tcpDialer, loadUpstreamCa(l.upstream.tls.ca));
  const dest = target.dial.address ?? host;
  const dialled = `${dest}:${target.dial.dialPort ?? port}`;
  if (net.isIP(dest)) {
    add({ step: 'dns', status: 'skip', detail: `${dest} is an IP address` });
  } else {
    try {
      const addrs = await dns.lookup(dest, { all: true });
      add({ step: 'dns', status: 'ok', detail: `${dest} -> ${addrs.map((a) => a.address).join(', ')}` });
    } catch (err) {
      add({
        step: 'dns',
        status: 'fail',
        detail: `${dest}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        causes: [
          'the endpoint name is misspelt',
          'the VPC has no DNS resolution for it (private hosted zone, resolver rules)',
        ],
        fix: 'fix upstream.host, or set upstream.address to the IP to dial (TLS still checks upstream.host)',
      });
      return out;
    }
  }

  // TCP
  try {
    const s = await tcpDialer.dial(target.dial);
    s.destroy();
    const forHost = dialled === `${host}:${port}` ? '' : ` for ${host}:${port}`;
    add({ step: 'tcp', status: 'ok', detail: `connected to ${dialled}${forHost}` });
  } catch (err) {
    add({
      step: 'tcp',
      status: 'fail',
      detail: asProxyError(err).message,
      causes: [
        'the database is stopped or the port is wrong',
        'a security group or NACL blocks this host',
        'a route or VPC endpoint is missing',
      ],
      fix: 'allow this host in the database security group on the port, and check upstream.port',
    });
    return out;
  }

  // TLS (chain and name), then a real login, with the engine's own handshake
  let session: ProbeSession;
  try {
    session = await PROBES[l.engine](target, user ?? 'doctor', l.upstream.database ?? o.database);
    const c = session.tls.getPeerCertificate();
    add({
      step: 'tls',
      status: 'ok',
      detail: `${session.tls.getProtocol()} ${session.tls.getCipher()?.name}${l.engine === 'postgres' ? ` (negotiation ${target.negotiation ?? 'postgres'})` : ''}; subject CN=${c.subject?.CN}; issuer CN=${c.issuer?.CN}; valid until ${c.valid_to}`,
    });
  } catch (err) {
    const e = asProxyError(err);
    add({
      step: 'tls',
      status: 'fail',
      detail: e.message,
      causes: [
        'upstream.tls.ca does not contain the issuer (RDS endpoints need ca: rds)',
        'upstream.host is not the name on the certificate (dial another address with upstream.address)',
      ],
      ...(e.hint ? { fix: e.hint } : {}),
    });
    return out;
  }
  if (!user || secret === undefined) {
    session.close();
    add({
      step: 'login',
      status: 'skip',
      detail: !user
        ? 'no upstream.user in the config; pass --user NAME to try a login'
        : 'no token (see the credentials step)',
    });
    return out;
  }
  try {
    const note = await session.login(secret);
    add({
      step: 'login',
      status: 'ok',
      detail: note
        ? `authenticated as ${user} (${note}; pass --database to pick one)`
        : `logged in as ${user}${session.database ? ` to ${session.database}` : ''}`,
    });
  } catch (err) {
    const e = asProxyError(err);
    const sqlState = e.serverError?.sqlState;
    const code = sqlState
      ? ` (SQLSTATE ${sqlState}${e.serverError?.errno ? `, errno ${e.serverError.errno}` : ''})`
      : '';
    add({
      step: 'login',
      status: 'fail',
      detail: `${e.message}${code}`,
      ...(e.code === ErrorCode.UpstreamAuth
        ? {
            causes: refusedLoginCauses(l, user),
            fix: 'fix the first cause that applies, then run doctor again',
          }
        : {}),
    });
  } finally {
    session.close();
  }
  return out;
}

/** Renders the steps for a terminal: one line each, causes and fix indented under failures. */
export function formatReport(steps: DoctorStep[]): string {
  const mark = { ok: 'ok  ', fail: 'FAIL', warn: 'WARN', skip: 'skip' } as const;
  return steps
    .map((s) => {
      let line = `[${s.listener}] ${mark[s.status]} ${s.step.padEnd(11)} ${s.detail}`;
      for (const c of s.causes ?? []) line += `\n        likely cause: ${c}`;
      if (s.fix) line += `\n        fix: ${s.fix}`;
      return line;
    })
    .join('\n');
}
