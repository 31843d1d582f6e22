import type { Config, Listener } from './config/schema';
import { readSecret } from './config/secrets';
import type { Logger } from './log';
import { type Dialer, loadUpstreamCa, tcpDialer } from './net/dial';
import { LocalTls } from './net/localTls';
import type { TokenMinter, TokenSource } from './credentials/tokens';
import { CredentialsHub } from './credentials/hub';
import { CancelRegistry, PostgresEngine } from './engines/postgres';
import type { Engine } from './proxy/engine';
import { ProxyListener } from './proxy/listener';
import { ErrorCode, ProxyError } from './errors';

/** Outside dependencies, injectable for tests; real ones by default. */
export interface AppDeps {
  log: Logger;
  dialer?: Dialer;
  /** Signs IAM tokens; defaults to the SDK's credential chain. */
  minter?: TokenMinter;
  env?: NodeJS.ProcessEnv;
}

/** A running proxy: its listeners and a way to stop them. */
export interface ProxyApp {
  listeners: ProxyListener[];
  localTls: LocalTls;
  /** Stops accepting, then closes every connection. */
  close(): Promise<void>;
}

/** Builds the engine for a listener; throws ProxyError(Config) for unusable settings. */
function buildEngine(l: Listener, shared: { credentials: CredentialsHub; localTls: LocalTls; cancels: CancelRegistry; dialer: Dialer; env: NodeJS.ProcessEnv }): Engine {
  const secrets: TokenSource = shared.credentials.sourceFor(l);
  const localUsers = l.client.users.map((u) => ({ name: u.name, password: readSecret(u.password, shared.env) }));
  const common = {
    listener: l,
    dialer: shared.dialer,
    secrets,
    upstreamCa: loadUpstreamCa(l.upstream.tls.ca),
    secureContext: shared.localTls.contextFor(l.client.tls),
    localUsers,
  };
  switch (l.engine) {
    case 'postgres':
      return new PostgresEngine({ ...common, cancels: shared.cancels });
    case 'mysql':
      throw new ProxyError(ErrorCode.Config, `listener ${l.name}: engine mysql is not available in this build`);
    default: {
      const never: never = l.engine;
      throw new ProxyError(ErrorCode.Config, `unknown engine ${String(never)}`);
    }
  }
}

/** Starts every listener in `cfg`. On a bind failure the ones already started are closed. */
export async function startProxy(cfg: Config, deps: AppDeps): Promise<ProxyApp> {
  const log = deps.log;
  const localTls = new LocalTls(cfg.localTls.caFile);
  const shared = {
    credentials: new CredentialsHub(cfg, { log, ...(deps.minter ? { minter: deps.minter } : {}), ...(deps.env ? { env: deps.env } : {}) }),
    localTls,
    cancels: new CancelRegistry(),
    dialer: deps.dialer ?? tcpDialer,
    env: deps.env ?? process.env,
  };
  const listeners = cfg.listeners.map(
    (l) => new ProxyListener(l.name, l.listen, buildEngine(l, shared), log, l.handshakeTimeoutMs),
  );
  const started: ProxyListener[] = [];
  try {
    for (const pl of listeners) {
      await pl.start();
      started.push(pl);
    }
  } catch (err) {
    await Promise.all(started.map((s) => s.stopAccepting()));
    throw err;
  }
  if (cfg.listeners.some((l) => l.client.tls === 'auto')) log.info({ caFile: localTls.caPath }, 'local TLS CA written');
  return {
    listeners,
    localTls,
    async close() {
      await Promise.all(listeners.map((l) => l.stopAccepting()));
      for (const l of listeners) l.closeAll();
      shared.credentials.close();
    },
  };
}
