/** The bench's parts: /proc memory reader and sampler, bandwidth readers, ORT profile summary. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { measureBandwidth, wasmReadModule } from '../src/bench/bandwidth.js';
import { MemorySampler, parseProcStatus, readAnonHugePages, readMemoryStatus, thpMode } from '../src/bench/memory.js';
import { summariseProfile, type OrtProfileEvent } from '../src/bench/ort-profile.js';

it('parses the real /proc/self/status: the parts add up to the resident set', () => {
  const m = readMemoryStatus();
  expect(m.rss).toBeGreaterThan(0);
  expect(m.anon).toBeGreaterThan(0);
  expect(m.file).toBeGreaterThan(0);
  expect(m.hwm).toBeGreaterThanOrEqual(m.rss);
  // The kernel defines VmRSS as RssAnon + RssFile + RssShmem (all in kB).
  expect(m.anon + m.file + m.shmem).toBe(m.rss);
});

it('parses status text in kB, missing fields as 0', () => {
  const text =
    'Name:\tnode\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nRssAnon:\t   512 kB\nRssFile:\t   500 kB\nRssShmem:\t    12 kB\n';
  expect(parseProcStatus(text)).toEqual({
    rss: 1024 * 1024,
    hwm: 2048 * 1024,
    anon: 512 * 1024,
    file: 500 * 1024,
    shmem: 12 * 1024,
  });
  expect(parseProcStatus('Name:\tx\n')).toEqual({ rss: 0, hwm: 0, anon: 0, file: 0, shmem: 0 });
});

/** The size of one transparent huge page (PMD-mapped), bytes. */
const hugePageBytes = (): number => Number(readFileSync('/sys/kernel/mm/transparent_hugepage/hpage_pmd_size', 'utf8'));

it('sees heap blocks on transparent huge pages when glibc is asked for them', (ctx) => {
  const mode = thpMode();
  expect(['always', 'madvise', 'never']).toContain(mode);
  if (mode === 'never') ctx.skip();
  const probe = (tunables: string | undefined): number =>
    Number(
      execFileSync(
        process.execPath,
        [
          '--import',
          'tsx',
          '--input-type=module',
          '-e',
          "import { readAnonHugePages } from './src/bench/memory.ts'; const b = Buffer.alloc(64 << 20, 1); console.log(readAnonHugePages(), b.length)",
        ],
        {
          env: { ...process.env, GLIBC_TUNABLES: tunables },
          encoding: 'utf8',
        },
      ).split(' ')[0],
    );
  expect(probe('glibc.malloc.hugetlb=1')).toBeGreaterThanOrEqual(32 << 20);
  if (mode === 'madvise') expect(probe(undefined)).toBeLessThan(32 << 20);
  // In this process too: a whole number of PMD-sized huge pages, within the anonymous resident set.
  const here = readAnonHugePages();
  expect(here).not.toBeNull();
  expect(here! % hugePageBytes()).toBe(0);
  expect(here!).toBeLessThanOrEqual(readMemoryStatus().anon);
});

it('the sampler keeps sampling while the main thread is blocked (as during session.run)', async () => {
  const s = MemorySampler.start(20);
  try {
    await new Promise((r) => setTimeout(r, 60));
    const before = s.peak().samples;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 300);
    const after = s.peak().samples;
    expect(after - before).toBeGreaterThanOrEqual(3);
    const rep = await s.stop();
    expect(rep.peak.anon).toBeGreaterThan(0);
    expect(rep.peak.rss).toBeGreaterThanOrEqual(rep.current.rss);
  } finally {
    await s.stop();
  }
});

/** The few WebAssembly JS APIs used here (this project's TypeScript lib has no DOM/WebAssembly types). */
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Memory: new (d: { initial: number }) => { buffer: ArrayBuffer };
  Module: new (bytes: Uint8Array) => object;
  Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
}
const WebAssembly = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

it('the hand-assembled wasm reader is valid and reads every byte (XOR of all 16-byte words, lane 0)', () => {
  const bytes = wasmReadModule();
  expect(WebAssembly.validate(bytes)).toBe(true);
  const mem = new WebAssembly.Memory({ initial: 1 });
  const words = new Int32Array(mem.buffer);
  for (let i = 0; i < words.length; i++) words[i] = Math.imul(i + 1, 0x9e3779b1);
  const f = new WebAssembly.Instance(new WebAssembly.Module(bytes), { e: { m: mem } }).exports.f as (
    p: number,
    end: number,
  ) => number;
  let want = 0;
  for (let i = 0; i < words.length; i += 4) want ^= words[i]!;
  expect(f(0, mem.buffer.byteLength)).toBe(want);
  expect(f(0, 0)).toBe(0);
});

it('measures positive read and copy bandwidth on a small buffer', async () => {
  const r = await measureBandwidth({ threads: 2, bytes: 4 << 20, reps: 2 });
  expect(r.readByMethod.ort).toBeGreaterThan(0);
  expect(r.readByMethod.wasm).toBeGreaterThan(0);
  expect(r.readGBps).toBe(Math.max(r.readByMethod.ort, r.readByMethod.wasm));
  expect(r.copyGBps).toBeGreaterThan(0);
  expect(r).toMatchObject({ threads: 2, bytes: 4 << 20, reps: 2 });
});

it('sums kernel time of the decode runs only, by op and by node', () => {
  const run = (ts: number, dur: number): OrtProfileEvent => ({ cat: 'Session', name: 'model_run', ts, dur });
  const node = (name: string, op: string, ts: number, dur: number): OrtProfileEvent => ({
    cat: 'Node',
    name: `${name}_kernel_time`,
    ts,
    dur,
    args: { op_name: op },
  });
  const events: OrtProfileEvent[] = [
    run(0, 1000), // prefill: excluded
    node('mm_big', 'MatMulNBits', 10, 900),
    run(2000, 100),
    node('mm1', 'MatMulNBits', 2010, 50),
    node('add1', 'Add', 2060, 10),
    { cat: 'Node', name: 'mm1_fence_before', ts: 2009, dur: 0 },
    run(3000, 100),
    node('mm1', 'MatMulNBits', 3010, 30),
    node('add1', 'Add', 3050, 10),
  ];
  const s = summariseProfile(events, 2, 12, new Map([['mm1', 'layers.0.mlp.up_proj.weight']]));
  expect(s.decodeRuns).toBe(2);
  expect(s.runMs).toBeCloseTo(0.1, 9);
  expect(s.kernelShare).toBeCloseTo(100 / 200, 9);
  expect(s.byOp).toEqual([
    { name: 'MatMulNBits', totalUs: 80, calls: 2, share: 0.4 },
    { name: 'Add', totalUs: 20, calls: 2, share: 0.1 },
  ]);
  expect(s.topNodes.map((n) => n.name)).toEqual(['mm1 layers.0.mlp.up_proj.weight (MatMulNBits)', 'add1 (Add)']);
  expect(s.topNodes[0]!.totalUs).toBe(80);
});
