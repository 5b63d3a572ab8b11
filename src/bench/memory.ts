/**
 * Resident memory, split the way benchmarks.md compares runtimes: anonymous (heap, arenas, pre-packed
 * weights: what the process really costs) versus file-backed (mapped model files: the kernel can drop and
 * re-read them). Linux only: read from /proc/<pid>/status.
 *
 * The kernel keeps a high-water mark only for the total (VmHWM), so a sampler records the peak of each part.
 * It runs in a worker thread because onnxruntime-node's session.run blocks the main thread for the whole
 * run (a main-thread timer would not fire during a prefill).
 */
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';

export interface MemoryStatus {
  /** Current resident set (VmRSS), bytes. */
  rss: number;
  /** Kernel's peak resident set since start or the last reset (VmHWM), bytes. */
  hwm: number;
  anon: number;
  file: number;
  shmem: number;
}

const FIELDS: Record<string, keyof MemoryStatus> = {
  VmRSS: 'rss',
  VmHWM: 'hwm',
  RssAnon: 'anon',
  RssFile: 'file',
  RssShmem: 'shmem',
};

/** Parses the text of /proc/<pid>/status (values are in kB = KiB). Missing fields read 0. */
export function parseProcStatus(text: string): MemoryStatus {
  const out: MemoryStatus = { rss: 0, hwm: 0, anon: 0, file: 0, shmem: 0 };
  for (const line of text.split('\n')) {
    const m = /^(\w+):\s+(\d+)\s+kB/.exec(line);
    const key = m ? FIELDS[m[1]!] : undefined;
    if (key) out[key] = Number(m![2]) * 1024;
  }
  return out;
}

export function readMemoryStatus(pid: number | 'self' = 'self'): MemoryStatus {
  return parseProcStatus(readFileSync(`/proc/${pid}/status`, 'utf8'));
}

/**
 * Anonymous memory backed by transparent huge pages now (AnonHugePages of /proc/self/smaps_rollup), bytes;
 * null where unavailable. Huge pages matter here: streaming 1 GiB through 4 KiB pages reads markedly slower
 * on virtual machines (TLB misses), and glibc only asks for them with GLIBC_TUNABLES=glibc.malloc.hugetlb=1
 * when the kernel's THP mode is madvise.
 */
export function readAnonHugePages(): number | null {
  try {
    const m = /^AnonHugePages:\s+(\d+)\s+kB/m.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** The kernel's transparent-huge-page mode (always | madvise | never), or null where unknown. */
export function thpMode(): string | null {
  try {
    return /\[(\w+)\]/.exec(readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

export interface MemoryPeaks {
  /** Peak total, from the kernel (exact). */
  rss: number;
  /** Peaks of the parts, as sampled (each part's peak may fall at a different moment than the total's). */
  anon: number;
  file: number;
  shmem: number;
  samples: number;
}

export interface MemoryReport {
  peak: MemoryPeaks;
  current: MemoryStatus;
  /** Of current anonymous memory, bytes on transparent huge pages (null: not reported by this kernel). */
  currentAnonHugePages: number | null;
  intervalMs: number;
}

// Slots of the shared Float64Array the sampler writes: peaks of anon, file, shmem, rss, then a sample count.
const SLOTS = 5;

const SAMPLER = `
const { workerData } = require('node:worker_threads');
const { readFileSync } = require('node:fs');
const peaks = new Float64Array(workerData.peaks);
const stop = new Int32Array(workerData.stop);
const kb = (text, key) => { const m = new RegExp('^' + key + ':\\\\s+(\\\\d+)', 'm').exec(text); return m ? Number(m[1]) * 1024 : 0; };
for (;;) {
  const t = readFileSync('/proc/self/status', 'utf8');
  const v = [kb(t, 'RssAnon'), kb(t, 'RssFile'), kb(t, 'RssShmem'), kb(t, 'VmRSS')];
  for (let i = 0; i < 4; i++) if (v[i] > peaks[i]) peaks[i] = v[i];
  peaks[4]++;
  if (Atomics.wait(stop, 0, 0, workerData.intervalMs) !== 'timed-out') break;
}
`;

/** Samples /proc/self/status every `intervalMs` from a worker thread until stop(). */
export class MemorySampler {
  private readonly peaks = new Float64Array(new SharedArrayBuffer(SLOTS * 8));
  private readonly stopFlag = new Int32Array(new SharedArrayBuffer(4));
  private readonly worker: Worker;
  private stopped = false;

  private constructor(readonly intervalMs: number) {
    this.worker = new Worker(SAMPLER, {
      eval: true,
      workerData: { peaks: this.peaks.buffer, stop: this.stopFlag.buffer, intervalMs },
    });
    // The sampler must never keep the bench alive on its own.
    this.worker.unref();
  }

  static start(intervalMs = 50): MemorySampler {
    return new MemorySampler(intervalMs);
  }

  /** Peaks so far, including a fresh sample taken now (or `now`, when given). */
  peak(now: MemoryStatus = readMemoryStatus()): MemoryPeaks {
    const p = this.peaks;
    return {
      rss: Math.max(now.hwm, p[3]!),
      anon: Math.max(now.anon, p[0]!),
      file: Math.max(now.file, p[1]!),
      shmem: Math.max(now.shmem, p[2]!),
      samples: p[4]!,
    };
  }

  report(): MemoryReport {
    const current = readMemoryStatus();
    return {
      peak: this.peak(current),
      current,
      currentAnonHugePages: readAnonHugePages(),
      intervalMs: this.intervalMs,
    };
  }

  async stop(): Promise<MemoryReport> {
    const r = this.report();
    if (!this.stopped) {
      this.stopped = true;
      Atomics.store(this.stopFlag, 0, 1);
      Atomics.notify(this.stopFlag, 0);
      await this.worker.terminate();
    }
    return r;
  }
}
