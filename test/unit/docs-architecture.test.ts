/**
 * docs/ARCHITECTURE.md walks one connection through the source: every module it names must
 * exist, and every module of the connection path must be named, so the walk cannot go stale
 * silently.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

const root = path.resolve(__dirname, '../..');
const doc = readFileSync(path.join(root, 'docs/ARCHITECTURE.md'), 'utf8');

describe('docs/ARCHITECTURE.md', () => {
  it('names only modules that exist', () => {
    const named = [...new Set(doc.match(/src\/[\w/.-]+\.ts/g) ?? [])];
    expect(named.length).toBeGreaterThan(20);
    expect(named.filter((f) => !existsSync(path.join(root, f)))).toEqual([]);
  });

  it('names every module of the connection path (src/proxy, src/engines, src/net)', () => {
    const dirs = ['src/proxy', 'src/engines/postgres', 'src/engines/mysql', 'src/net'];
    const modules = dirs.flatMap((d) =>
      readdirSync(path.join(root, d))
        .filter((f) => f.endsWith('.ts'))
        .map((f) => `${d}/${f}`),
    );
    // A module may be named by its path, or by its file name in a row that names its folder.
    const unnamed = modules.filter((m) => !doc.includes(m) && !doc.includes(`\`${path.basename(m)}\``));
    expect(unnamed).toEqual([]);
  });
});
