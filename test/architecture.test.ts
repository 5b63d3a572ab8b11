/**
 * The architecture as the import graph shows it, checked on every run: folders without cycles, the run-time
 * code apart from the package builders (it reads only the package contract and its readers), and an engine and
 * MQTT edge that do not know each other. Imports are read from the source text (relative specifiers only).
 */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(import.meta.dirname, '..', 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sourceFiles(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

const IMPORT =
  /(?:^|\n)\s*(?:import|export)\b[^'"]*?\bfrom\s*['"](\.{1,2}\/[^'"]+)['"]|\bimport\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g;

/** file (relative to src, .ts) -> the files it imports. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of sourceFiles(SRC)) {
    const text = readFileSync(file, 'utf8');
    const deps: string[] = [];
    for (const m of text.matchAll(IMPORT)) {
      const spec = (m[1] ?? m[2])!;
      deps.push(path.relative(SRC, path.resolve(path.dirname(file), spec)).replace(/\.js$/, '.ts'));
    }
    graph.set(path.relative(SRC, file), deps);
  }
  return graph;
}

const graph = importGraph();
const folderOf = (file: string): string => path.dirname(file);

function folderEdges(): Map<string, Set<string>> {
  const edges = new Map<string, Set<string>>();
  for (const [file, deps] of graph) {
    for (const dep of deps) {
      const a = folderOf(file);
      const b = folderOf(dep);
      if (a === b) continue;
      if (!edges.has(a)) edges.set(a, new Set());
      edges.get(a)!.add(b);
    }
  }
  return edges;
}

/** Every folder cycle, as a path of folders (empty when there is none). */
function folderCycles(edges: Map<string, Set<string>>): string[][] {
  const cycles: string[][] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (f: string): void => {
    state.set(f, 'open');
    stack.push(f);
    for (const g of edges.get(f) ?? []) {
      if (state.get(g) === 'open') cycles.push([...stack.slice(stack.indexOf(g)), g]);
      else if (!state.has(g)) visit(g);
    }
    stack.pop();
    state.set(f, 'done');
  };
  for (const f of edges.keys()) if (!state.has(f)) visit(f);
  return cycles;
}

/** Every file reachable from `from` through imports. */
function closure(from: string[]): Set<string> {
  const seen = new Set<string>();
  const todo = [...from];
  while (todo.length) {
    const f = todo.pop()!;
    if (seen.has(f)) continue;
    seen.add(f);
    todo.push(...(graph.get(f) ?? []));
  }
  return seen;
}

/** What the run-time code may read of src/model: the package contract and its readers. */
const PACKAGE_CONTRACT = new Set([
  'model/gemma4/contract.ts',
  'model/gemma4/config.ts',
  'model/package/manifest.ts',
  'model/package/load.ts',
  'model/package/verify.ts',
  'model/ple/pager.ts',
  'model/ple/format.ts',
  'model/ple/f16.ts',
  'model/quant.ts',
]);

const RUNTIME_FOLDERS = [
  'engine',
  'daemon',
  'pipelines',
  'sources',
  'mqtt',
  'audio',
  'vision',
  'scheduler',
  'config',
  'common',
];
const runtimeFiles = [...graph.keys()].filter((f) => RUNTIME_FOLDERS.includes(f.split(path.sep)[0]!));

describe('the import graph', () => {
  it('reads every source file and finds imports', () => {
    expect(graph.size).toBeGreaterThan(100);
    expect(graph.get('engine/engine.ts')).toContain('model/gemma4/contract.ts');
  });

  it('has no folder cycles', () => {
    const edges = folderEdges();
    expect(edges.get('daemon')).toContain('engine');
    expect(folderCycles(edges)).toEqual([]);
  });

  it('keeps the run time (engine, daemon, pipelines and the modules they use) apart from the package builders', () => {
    const reached = [...closure(runtimeFiles)].filter((f) => f.startsWith(`model${path.sep}`));
    expect(reached.filter((f) => !PACKAGE_CONTRACT.has(f))).toEqual([]);
  });

  it('gives the engine no knowledge of MQTT, pipelines, the daemon or the CLI, and MQTT none of the engine', () => {
    const engineDeps = new Set([...(folderEdges().get('engine') ?? [])]);
    for (const f of ['mqtt', 'pipelines', 'daemon', 'cli'])
      expect(engineDeps.has(f), `engine imports ${f}`).toBe(false);
    const mqttDeps = [...(folderEdges().get('mqtt') ?? [])].sort();
    expect(mqttDeps).toEqual(['common', 'config']);
  });
});
