import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { DOCS_FILE, EXAMPLE_FILE, generateExampleYaml, generateMarkdown } from '../src/config/docs.js';
import { envVariables } from '../src/config/env.js';
import { isArray, isObject, isTaggedUnion, shapeOf, unionOptions, unwrap } from '../src/config/introspect.js';
import { loadConfig, parseConfig } from '../src/config/load.js';
import { perchConfigSchema } from '../src/config/schema.js';

/** Every key path of the schema (lists as [], union options merged), flagged when it holds a plain mapping. */
function keyPaths(schema: z.ZodType, prefix = ''): { path: string; mapping: boolean }[] {
  const s = unwrap(schema).schema;
  if (isArray(s)) return keyPaths(s.element, `${prefix}[]`);
  const objects = isTaggedUnion(s) ? unionOptions(s).map((o) => o.schema) : isObject(s) ? [s] : [];
  return objects.flatMap((o) =>
    Object.entries(shapeOf(o)).flatMap(([k, c]) => {
      const path = `${prefix}${prefix ? '.' : ''}${k}`;
      return [{ path, mapping: isObject(unwrap(c).schema) }, ...keyPaths(c, path)];
    }),
  );
}

/** Removes "# " at `column` from lines[from..to) — what a user does to uncomment an example block. */
function uncomment(lines: string[], from: number, to: number, column: number): string[] {
  return lines.map((l, i) =>
    i >= from && i < to && l.slice(column, column + 2) === '# ' ? l.slice(0, column) + l.slice(column + 2) : l,
  );
}

describe('generated configuration docs', () => {
  it('committed config/perch.example.yaml and docs/config.md equal the generator output (run `perch config docs --write`)', () => {
    expect(readFileSync(EXAMPLE_FILE, 'utf8')).toBe(generateExampleYaml());
    expect(readFileSync(DOCS_FILE, 'utf8')).toBe(generateMarkdown());
  });

  it('the example file parses, validates and holds exactly the defaults', () => {
    const config = loadConfig(EXAMPLE_FILE, {});
    const defaults = parseConfig('', { file: EXAMPLE_FILE, env: {} }).config;
    expect(config).toEqual(defaults);
  });

  it('the example shows every key and every environment variable; the reference names every key and variable', () => {
    const example = generateExampleYaml();
    const md = generateMarkdown();
    const paths = keyPaths(perchConfigSchema);
    expect(paths.length).toBeGreaterThan(60);
    for (const { path, mapping } of paths) {
      const last = path.split('.').pop()!.replace('[]', '');
      expect(example, path).toMatch(new RegExp(`^[ #]*(- )?${last}:`, 'm'));
      // Mappings are headings (top level) or prefixes of their keys' rows.
      expect(md, path).toContain(mapping ? path : '`' + path + '`');
    }
    for (const v of envVariables()) {
      expect(example).toContain(v.name);
      expect(md).toContain('`' + v.name + '`');
      if (v.fileName) expect(md).toContain('`' + v.fileName + '`');
    }
    expect(md).toMatch(/Lists \(`cameras`\) cannot be set from the environment/);
  });

  it('each commented source example validates once uncommented', () => {
    const lines = generateExampleYaml().split('\n');
    const file = EXAMPLE_FILE;
    // Audio: every "  # source:" block, one at a time.
    const starts = lines.flatMap((l, i) => (l === '  # source:' ? [i] : []));
    expect(starts).toHaveLength(2);
    const types: string[] = [];
    for (const start of starts) {
      let end = start + 1;
      while (lines[end]?.startsWith('  #   ')) end++;
      const text = uncomment(lines, start, end, 2).join('\n');
      const { config } = parseConfig(text, { file, env: { PERCH_AUDIO_ENABLED: 'true' } });
      expect(config.audio.enabled).toBe(true);
      types.push(config.audio.source!.type);
    }
    expect(types).toEqual(['microphone', 'wav']);
    // Cameras: replace `cameras: []` with the commented example list.
    const at = lines.indexOf('cameras: []');
    const listStart = lines.indexOf('# cameras:', at);
    const withCams = uncomment(lines, listStart, lines.length, 0);
    withCams.splice(at, 1);
    const { config } = parseConfig(withCams.join('\n'), { file, env: {} });
    expect(config.cameras.map((c) => [c.name, c.source.type])).toEqual([
      ['door', 'ffmpeg'],
      ['driveway', 'rpicam'],
      ['garden', 'http'],
      ['frames', 'directory'],
    ]);
  });

  it('refuses a schema key without a description', () => {
    const undocumented = z.object({
      section: z
        .object({ key: z.number().default(1) })
        .prefault({})
        .describe('A section.'),
    });
    expect(() => generateExampleYaml(undocumented)).toThrow(/schema key key has no description/);
    expect(() => generateMarkdown(undocumented)).toThrow(/schema key section.key has no description/);
  });
});
