/** Perch's version, read once from package.json (two levels above src/common/ and dist/common/ alike). */
import { readFileSync } from 'node:fs';

let cached: string | undefined;

export function perchVersion(): string {
  if (cached === undefined) {
    try {
      cached = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string })
        .version;
    } catch {
      cached = 'unknown';
    }
  }
  return cached;
}
