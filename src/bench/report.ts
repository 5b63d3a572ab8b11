/** The human-readable form of a BenchResult (the --json form is the object itself). */
import { basename } from 'node:path';
import type { BenchResult } from './run.js';

const MiB = 2 ** 20;
const PACKED: Record<BenchResult['prepacked'], string> = {
  cached: 'memory-mapped from the prepacked file cache',
  built: 'memory-mapped from the prepacked file cache, built during this load (its time is in the load figure)',
  heap: 'packed by ONNX Runtime on the heap (--no-prepacked-cache, or the cache was unavailable)',
};
const mib = (b: number): string => `${(b / MiB).toFixed(0)} MiB`;
const mb = (b: number): string => (b >= 1e6 ? `${(b / 1e6).toFixed(1)} MB` : `${(b / 1e3).toFixed(1)} kB`);
const pct = (x: number): string => `${(x * 100).toFixed(0)}%`;
const f1 = (x: number): string => x.toFixed(1);

/** Node labels without the checkpoint prefix, cut to fit the table. */
const shortNode = (name: string): string =>
  name.replace('model.language_model.', '').replace('.weight', '').slice(0, 60);

function table(rows: Array<[string, string]>): string {
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`).join('\n');
}

export function formatReport(r: BenchResult): string {
  const m = r.machine;
  const out: string[] = [];
  out.push(
    `machine   ${m.cpu}, ${m.cores} cores, ${m.threads} thread(s), node ${m.node}, onnxruntime ${m.onnxruntime}`,
  );
  out.push(
    `          huge pages: kernel THP ${m.hugePages.thp ?? 'unknown'}, GLIBC_TUNABLES ${m.hugePages.glibcTunables ?? 'unset'}`,
  );
  out.push(
    `          load average ${m.loadAvgStart.map((x) => x.toFixed(2)).join(' ')} at start, ${m.loadAvgEnd.map((x) => x.toFixed(2)).join(' ')} at end`,
  );
  out.push(
    `model     ${r.model.dir} (${r.model.source}, profile ${r.model.profile}, ${r.model.linearBits ?? 32}-bit linears, ${mb(r.model.fileBytes)})`,
  );
  out.push(
    `settings  median of ${r.settings.runs} run(s), ${r.settings.decodeTokens} decoded tokens, greedy, PLE cache ${r.settings.pleCacheMb} MiB, load ${(r.loadMs / 1000).toFixed(1)} s`,
  );
  out.push(`          packed weights: ${PACKED[r.prepacked]}`);
  out.push('');
  const first = r.prompts[0]?.promptTokens ?? 0;
  out.push(`  prompt  prefill tok/s  first token ms  decode tok/s  decode vs ${first}  (best run: prefill, decode)`);
  for (const p of r.prompts) {
    out.push(
      `  ${String(p.promptTokens).padStart(6)}  ${f1(p.prefillTokPerS).padStart(13)}  ${p.firstTokenMs.toFixed(0).padStart(14)}  ${f1(p.decodeTokPerS).padStart(12)}  ${pct(p.decodeVsFirst).padStart(`decode vs ${first}`.length)}  (${f1(p.best.prefillTokPerS)}, ${f1(p.best.decodeTokPerS)})`,
    );
  }
  out.push('');
  const w = r.weights;
  const b = r.bandwidth;
  const l = r.limits;
  out.push(
    table([
      [
        'weights read / token',
        `${mb(w.perToken)} (matmuls ${mb(w.matmulBytes)} + LM head ${mb(w.lmHeadBytes)} + PLE row ${w.pleRowBytes} B)`,
      ],
      [
        'read bandwidth',
        `${f1(b.readGBps)} GB/s (ONNX Runtime ${f1(b.readByMethod.ort)}, WebAssembly on 4 KiB pages ${f1(b.readByMethod.wasm)}; ${b.threads} thread(s), ${mib(b.bytes)}, ${b.pages === '4k' ? '4 KiB' : 'huge'} pages)`,
      ],
      ['copy bandwidth', `${f1(b.copyGBps)} GB/s (memcpy, each byte counted once)`],
      [
        'bandwidth runs',
        r.bandwidthRuns.map((x) => `read ${f1(x.readGBps)} / copy ${f1(x.copyGBps)}`).join(', ') +
          ' GB/s (before load, after the runs; best used)',
      ],
      ['decode limit', `${f1(l.readLimitTokPerS)} tok/s at read bandwidth, ${f1(l.copyLimitTokPerS)} at copy`],
      ...kernelRows(r),
      [
        'decode share',
        `${pct(l.decodeShareOfRead)} of the read limit, ${pct(l.decodeShareOfCopy)} of the copy limit (decode ${f1(r.decodeTokPerS)} tok/s after ${r.prompts[0]!.promptTokens}-token prompt)`,
      ],
      [
        'grammar mask',
        `${r.mask.perTokenMs.p50.toFixed(3)} ms per token (p95 ${r.mask.perTokenMs.p95.toFixed(3)}; ${r.mask.steps} steps of a JSON caption) over ${r.mask.vocabSize} ids: ${pct(r.mask.shareOfDecodeStep)} of a decode step; vocabulary table ${r.mask.tableMs.toFixed(0)} ms once, schema ${r.mask.compileMs.toFixed(0)} ms once`,
      ],
      [
        'picking a token',
        `greedy ${r.sampling.greedyMs.toFixed(3)} ms, default sampling (temperature 1, top-k 64, top-p 0.95) ${r.sampling.defaultMs.toFixed(3)} ms per token over ${r.sampling.vocabSize} ids: ${pct(r.sampling.greedyShare)} and ${pct(r.sampling.defaultShare)} of a decode step`,
      ],
      [
        'peak RSS',
        `${mib(r.memory.peak.rss)} (anonymous ${mib(r.memory.peak.anon)}, file ${mib(r.memory.peak.file)}, shmem ${mib(r.memory.peak.shmem)}; sampled every ${r.memory.intervalMs} ms)`,
      ],
      [
        'with speech, caption',
        `peak RSS ${mib(r.memoryWithMedia.peak.rss)} (anonymous ${mib(r.memoryWithMedia.peak.anon)}, file ${mib(r.memoryWithMedia.peak.file)}) over the whole run, encoders loaded`,
      ],
      [
        'current RSS',
        `${mib(r.memory.current.rss)} (anonymous ${mib(r.memory.current.anon)}, of it on huge pages ${r.memory.currentAnonHugePages === null ? 'unknown' : mib(r.memory.currentAnonHugePages)}; file ${mib(r.memory.current.file)})`,
      ],
      [
        'PLE cache',
        `${r.ple.hits} hits, ${r.ple.misses} misses, ${mib(r.ple.residentBytes)} resident; row read p50 ${r.ple.readLatencyMs.p50.toFixed(3)} ms, p95 ${r.ple.readLatencyMs.p95.toFixed(3)} ms`,
      ],
    ]),
  );
  out.push('');
  out.push(...mediaLines(r));
  if (r.profile) {
    const p = r.profile;
    out.push('');
    out.push(
      `ORT profile: ${p.decodeRuns} decode runs, ${p.runMs.toFixed(1)} ms each, ${pct(p.kernelShare)} of it inside kernels`,
    );
    out.push('  op type                          ms/token  calls/token  share');
    for (const o of p.byOp)
      out.push(
        `  ${o.name.padEnd(32)} ${(o.totalUs / 1000 / p.decodeRuns).toFixed(2).padStart(8)}  ${(o.calls / p.decodeRuns).toFixed(0).padStart(11)}  ${pct(o.share).padStart(5)}`,
      );
    out.push('  top nodes');
    for (const o of p.topNodes)
      out.push(
        `  ${shortNode(o.name).padEnd(60)} ${(o.totalUs / 1000 / p.decodeRuns).toFixed(2).padStart(8)} ms  ${pct(o.share).padStart(5)}`,
      );
  }
  return out.join('\n') + '\n';
}

/** The kernels' own speed and the decode ceiling it sets, beside the bandwidth limit. */
function kernelRows(r: BenchResult): Array<[string, string]> {
  const k = r.kernels;
  if (!k) return [];
  const shape = (s: { bits: number; blockSize: number; accuracyLevel: number }): string =>
    `${s.bits}-bit, block ${s.blockSize}, accuracy_level ${s.accuracyLevel}`;
  const head = k.lmHead ? `; LM head (${shape(k.lmHead)}) ${f1(k.lmHead.gbps)} GB/s` : '';
  return [
    [
      'MatMulNBits alone',
      `the decoder's ${k.linear.nodes} linears (mostly ${shape(k.linear)}) read ${f1(k.linear.gbps)} GB/s at one token${head}; ${k.threads} thread(s)`,
    ],
    [
      'kernel ceiling',
      `${f1(k.ceilingTokPerS)} tok/s if decode were nothing but these kernels; decode reaches ${pct(k.decodeShareOfCeiling)} of it (${k.rounds.length} rounds alternating with decode at ${f1(k.decodeTokPerS)} tok/s)`,
    ],
    ...(k.prepackedFileCeiling
      ? ([
          [
            'ceiling, file-mapped',
            `${f1(k.prepackedFileCeiling.tokPerS)} tok/s with the kernels' weights mapped from a prepacked file as the decoder's are; decode reaches ${pct(k.prepackedFileCeiling.decodeShare)} of it`,
          ],
        ] as Array<[string, string]>)
      : []),
  ];
}

const ms = (x: number): string => `${x.toFixed(0)} ms`;

/** Speech and caption latency beside the issue's Pi 5 targets (with where this run actually was). */
export function mediaLines(r: BenchResult): string[] {
  const out: string[] = [];
  const m = r.machine;
  // The targets are the issue's, for a Pi 5 (arm64); a figure from another machine only compares loosely.
  const vs = (target: number): string =>
    `Pi 5 target: under ${ms(target)}; measured on ${m.arch}, ${m.cpu}${m.arch === 'arm64' ? '' : ', not a Pi'}`;
  const s = r.speech;
  if (s.skipped) out.push(`speech    skipped: ${s.reason}`);
  else {
    out.push(
      `speech    ${basename(s.file)}, ${s.audioSeconds.toFixed(1)} s utterance (${s.audioTokens} audio tokens), transcript up to ${s.maxTokens} tokens, median of ${s.runs.length} run(s)`,
    );
    out.push(
      table([
        ['end of speech -> transcript', `${ms(s.endToTranscriptMs)} (${vs(s.targetPi5Ms)})`],
        ['first transcript token', ms(s.firstTokenMs)],
        ['real-time factor', `${s.realTimeFactor.toFixed(3)} (processing / audio duration)`],
        [
          'split',
          `features ${ms(s.split.featuresMs)}, audio encoder ${ms(s.split.encodeMs)}, prefill ${ms(s.split.prefillMs)}, decode ${ms(s.split.decodeMs)} (${s.decodedTokens} tokens)`,
        ],
        [
          'prompt',
          `${s.promptTokens} tokens (${s.audioTokens} audio), ${s.reusedTokens} of them from the prefix cache; prefill ${(((s.promptTokens - s.reusedTokens) * 1000) / Math.max(1, s.split.prefillMs)).toFixed(1)} tok/s`,
        ],
      ]),
    );
    const st = s.streamed;
    if (st) {
      out.push(
        `  heard while spoken (audio.stream, the default): fed at the microphone's pace, then handed over; alternating with the above`,
      );
      out.push(
        table([
          [
            'end of speech -> transcript',
            `${ms(st.endToTranscriptMs)} (target: decode + 0.5 s = ${ms(st.targetMs)}; ${st.endToTranscriptMs <= st.targetMs ? 'met' : 'not met'}), ${(s.endToTranscriptMs / Math.max(1, st.endToTranscriptMs)).toFixed(2)}x faster than heard whole`,
          ],
          ['first transcript token', ms(st.firstTokenMs)],
          [
            'left after the end',
            `${s.audioTokens - st.streamedTokens} of ${s.audioTokens} audio tokens: features ${ms(st.split.featuresMs)}, audio encoder ${ms(st.split.encodeMs)}, prefill ${ms(st.split.prefillMs)} (with the closing tokens), decode ${ms(st.split.decodeMs)}`,
          ],
          [
            'transcript',
            `${st.sameTranscript ? 'the same tokens as heard whole' : 'other tokens than heard whole (random weights are chaotic: a 1e-7 change in one input row moves the logits by ~1, so other run sizes give other tokens; the equality is tested on the tiny package)'}; first-token logits differ by ${st.firstLogitsRelDiff.toExponential(1)} of their largest`,
          ],
        ]),
      );
    }
  }
  const c = r.caption;
  if (c.skipped) out.push(`caption   skipped: ${c.reason}`);
  else {
    out.push(
      `caption   ${basename(c.file)} at ${c.width}x${c.height}, ${c.imageTokens} image tokens, ${c.captionTokens} caption tokens greedy (${c.promptTokens}-token prompt), median of ${c.runs.length} run(s)`,
    );
    out.push(
      table([
        [
          'image encode',
          `${ms(c.imageEncodeMs)} (preprocess ${ms(c.split.preprocessMs)} + encoder ${ms(c.split.encodeMs)})`,
        ],
        ['frame -> caption', `${ms(c.frameToCaptionMs)} (${vs(c.targetPi5Ms)})`],
        [
          'early caption',
          `${ms(c.early.frameToCaptionMs)} at ${c.early.imageTokens} image tokens (budget ${c.early.budget}; image encode ${ms(c.early.imageEncodeMs)}, first token ${ms(c.early.firstTokenMs)}; target: within ${ms(c.early.targetMs)} of the first frame)`,
        ],
        ['first caption token', ms(c.firstTokenMs)],
        [
          'split',
          `preprocess ${ms(c.split.preprocessMs)}, encode ${ms(c.split.encodeMs)}, prefill ${ms(c.split.prefillMs)}, decode ${ms(c.split.decodeMs)} (${c.decodedTokens} tokens)`,
        ],
      ]),
    );
  }
  return out;
}
