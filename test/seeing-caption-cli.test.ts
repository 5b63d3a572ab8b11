/** `perch caption` as users run it: the real CLI process on a tiny package that can see. */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_CAPTION_PROMPT } from '../src/config/schema.js';
import { perch } from './cli-helpers.js';
import { makeTinyPackage, tempRoot } from './engine-helpers.js';
import { FRAMES, makeSeeingPackage } from './seeing-helpers.js';

let root: string;
let dir: string;
const img = join(FRAMES, 'frame-01.jpg');

beforeAll(async () => {
  root = tempRoot('caption-cli');
  dir = await makeSeeingPackage(root);
}, 120_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('perch caption', () => {
  it('prints a caption as JSON with the image size, tokens and latency split; the same seed streams the same text', async () => {
    const args = [
      'caption',
      img,
      '--model',
      dir,
      '--tokens',
      '70',
      '--seed',
      '9',
      '--max-tokens',
      '12',
      '--threads',
      '1',
      '--context-tokens',
      '512',
    ];
    const j = await perch(...args, '--json');
    expect(j.stderr).toMatch(/random weights/);
    expect(j.code).toBe(0);
    const out = JSON.parse(j.stdout) as Record<string, unknown>;
    expect(out).toMatchObject({
      file: img,
      width: 528,
      height: 288,
      image_tokens: 66,
      random_weights: true,
      finish_reason: expect.stringMatching(/^(stop|length)$/),
    });
    expect(typeof out.text).toBe('string');
    const latency = out.latency_ms as Record<string, number>;
    for (const k of ['vision', 'prefill', 'decode', 'total']) expect(latency[k]).toBeGreaterThanOrEqual(0);
    expect((out.tokens as { prompt: number }).prompt).toBeGreaterThan(66);

    const plain = await perch(...args);
    expect(plain.code).toBe(0);
    expect(plain.stdout).toBe(out.text ? `${String(out.text)}\n` : '');

    // --prompt replaces the default prompt: a longer one makes a longer prompt.
    const other = await perch(
      ...args,
      '--json',
      '--prompt',
      `${DEFAULT_CAPTION_PROMPT} Also say whether a parcel lies at the door.`,
    );
    expect((JSON.parse(other.stdout) as { tokens: { prompt: number } }).tokens.prompt).toBeGreaterThan(
      (out.tokens as { prompt: number }).prompt,
    );
  }, 60_000);

  it('fails with a message for a corrupt image, a package without vision and a bad token budget', async () => {
    const bad = join(root, 'bad.jpg');
    writeFileSync(bad, Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(300, 1)]));
    const corrupt = await perch('caption', bad, '--model', dir, '--threads', '1');
    expect(corrupt.code).toBe(1);
    expect(corrupt.stderr).toContain(`perch: ${bad}: not a decodable image`);

    const { dir: plain } = await makeTinyPackage(root, 'plain');
    const blind = await perch('caption', img, '--model', plain, '--threads', '1');
    expect(blind.code).toBe(1);
    expect(blind.stderr).toMatch(/has no vision encoder/);

    const budget = await perch('caption', img, '--model', dir, '--tokens', '100');
    expect(budget.code).not.toBe(0);
    expect(budget.stderr).toMatch(/expected one of 70, 140, 280, 560, 1120/);

    const missing = await perch('caption', join(root, 'nope.jpg'), '--model', dir);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/ENOENT/);
  }, 60_000);
});
