import { readFileSync } from 'node:fs';
import type { SecretRef } from './schema';
import { ErrorCode, ProxyError } from '../errors';

/**
 * Reads a secret at the moment it is needed, so a rotated file or a changed environment takes
 * effect without a restart. The error names where it looked, never the value.
 */
export function readSecret(ref: SecretRef, env: NodeJS.ProcessEnv = process.env): string {
  if (ref.env !== undefined) {
    const v = env[ref.env];
    if (v === undefined || v === '') {
      throw new ProxyError(ErrorCode.Config, `environment variable ${ref.env} is not set or empty`);
    }
    return v;
  }
  try {
    const v = readFileSync(ref.file as string, 'utf8').trim();
    if (v === '') throw new Error('file is empty');
    return v;
  } catch (err) {
    throw new ProxyError(ErrorCode.Config, `cannot read secret file ${ref.file}: ${(err as Error).message}`);
  }
}
