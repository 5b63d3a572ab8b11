import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { synthTokenizerFiles } from '../src/model/build/synth-tokenizer.js';
import { PackageTokenizer } from '../src/engine/tokenizer.js';

/** Byte-fallback token id of a byte in the synthetic vocabulary (bytes start at 16). */
const byteId = (b: number) => 16 + b;

const SAMPLES = [
  'Hello the world',
  'héllo wörld',
  'emoji 😀 and ✓ check',
  '日本語のテキスト',
  'tabs\tand\nnewlines  double',
];

describe('PackageTokenizer on the synthetic Gemma-layout tokenizer', () => {
  let tok: PackageTokenizer;
  let small: PackageTokenizer;
  let dir: string;

  beforeAll(async () => {
    const files = synthTokenizerFiles(262144);
    dir = await mkdtemp(join(tmpdir(), 'perch-tok-'));
    await writeFile(join(dir, 'tokenizer.json'), files.tokenizerJson);
    await writeFile(join(dir, 'tokenizer_config.json'), files.tokenizerConfigJson);
    tok = await PackageTokenizer.load(dir);
    const s = synthTokenizerFiles(512);
    small = PackageTokenizer.fromJson(s.tokenizerJson, s.tokenizerConfigJson);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('finds Gemma 4 special ids by content', () => {
    expect(tok.vocabSize).toBe(262144);
    expect(tok.special.bos).toBe(2);
    expect(tok.special.eos).toBe(1);
    expect(tok.special.pad).toBe(0);
    expect(tok.special.bosText).toBe('<bos>');
    expect(tok.special.markers).toMatchObject({
      turnStart: 4,
      turnEnd: 5,
      think: 6,
      channelStart: 7,
      channelEnd: 8,
      imageStart: 255999,
      audioStart: 256000,
      image: 258880,
      audio: 258881,
      imageEnd: 258882,
      audioEnd: 258883,
      video: 258884,
    });
    expect(tok.stopIds()).toEqual([1, 5]);
    expect(tok.tokenId('<|image|>')).toBe(258880);
    expect(tok.tokenContent(258881)).toBe('<|audio|>');
    expect(tok.isSpecial(5)).toBe(true);
    expect(tok.isSpecial(tok.encode('a')[0]!)).toBe(false);
  });

  it('puts the media markers at the top ids of a small vocabulary', () => {
    expect(small.vocabSize).toBe(512);
    expect(small.special.markers.turnEnd).toBe(5);
    expect(small.special.markers.imageStart).toBe(505);
    expect(small.special.markers.audioStart).toBe(506);
    expect(small.special.markers.image).toBe(507);
    expect(small.special.markers.audio).toBe(508);
  });

  it('round-trips text, using byte fallback for characters outside the vocabulary', () => {
    for (const text of SAMPLES) {
      const ids = tok.encode(text);
      expect(ids.length).toBeGreaterThan(0);
      expect(tok.decode(ids)).toBe(text);
    }
    // 'é' is not a vocabulary piece: it must come out as its two UTF-8 bytes.
    expect(tok.encode('é')).toEqual([byteId(0xc3), byteId(0xa9)]);
    // Spaces become the metaspace piece; merges apply.
    expect(tok.encode('the')).toEqual([tok.tokenId('th'), tok.tokenId('e')]);
    expect(tok.encode(' w')).toEqual([tok.tokenId('\u2581w')]);
  });

  it('adds no special tokens unless asked, and maps special text in input to its id', () => {
    expect(tok.encode('hi')).toEqual([tok.tokenId('hi')]);
    const ids = tok.encode('<bos><|turn>user\nhi<turn|>\n');
    expect(ids).toEqual([2, 4, ...tok.encode('user'), byteId(0x0a), tok.tokenId('hi'), 5, byteId(0x0a)]);
  });

  it('decodes with and without special tokens', () => {
    const ids = [2, 4, ...tok.encode('model\nhi there'), 5];
    expect(tok.decode(ids)).toBe('<bos><|turn>model\nhi there<turn|>');
    expect(tok.decode(ids, { skipSpecial: true })).toBe('model\nhi there');
    expect(tok.decode(Int32Array.from(ids), { skipSpecial: true })).toBe('model\nhi there');
  });

  it('streams text without splitting a UTF-8 character', () => {
    for (const text of SAMPLES) {
      const ids = tok.encode(text);
      const detok = tok.createDetokenizer();
      const deltas = ids.map((id) => detok.push(id));
      deltas.push(detok.flush());
      expect(deltas.join('')).toBe(text);
      for (const d of deltas) expect(d).not.toContain('\uFFFD');
    }
  });

  it('holds a multi-byte character until its last byte arrives', () => {
    const detok = tok.createDetokenizer();
    expect(detok.push(tok.tokenId('a')!)).toBe('a');
    // 😀 = F0 9F 98 80
    expect(detok.push(byteId(0xf0))).toBe('');
    expect(detok.push(byteId(0x9f))).toBe('');
    expect(detok.push(byteId(0x98))).toBe('');
    expect(detok.push(byteId(0x80))).toBe('😀');
    expect(detok.push(tok.tokenId('\u2581w')!)).toBe(' w');
    expect(detok.flush()).toBe('');
  });

  it('releases invalid byte sequences as a full decode would', () => {
    const cases = [
      [byteId(0xc3), tok.tokenId('a')!], // lead byte then ASCII
      [byteId(0xf0), byteId(0x9f)], // truncated at the end
      [
        byteId(0x80),
        byteId(0x80),
        byteId(0x80),
        byteId(0x80),
        byteId(0x80),
        byteId(0x80),
        byteId(0x80),
        byteId(0x80),
        byteId(0x80),
        tok.tokenId('b')!,
      ],
    ];
    for (const ids of cases) {
      const detok = tok.createDetokenizer();
      let out = '';
      for (const id of ids) out += detok.push(id);
      out += detok.flush();
      expect(out).toBe(tok.decode(ids));
    }
  });

  it('streams with special tokens skipped', () => {
    const ids = [7, ...tok.encode('thought\nx'), 8, ...tok.encode('Answer é'), 5];
    const detok = tok.createDetokenizer({ skipSpecial: true });
    let out = '';
    for (const id of ids) out += detok.push(id);
    out += detok.flush();
    expect(out).toBe(tok.decode(ids, { skipSpecial: true }));
    expect(out).toBe('thought\nxAnswer é');
  });
});

describe('PackageTokenizer on the layout real Gemma checkpoints ship', () => {
  it('loads a Sequence normalizer, a Split pre-tokenizer and a bos-adding post-processor', () => {
    const files = synthTokenizerFiles(1024);
    const json = JSON.parse(files.tokenizerJson) as Record<string, unknown>;
    const plain = PackageTokenizer.fromJson(files.tokenizerJson, files.tokenizerConfigJson);
    // The converted Gemma tokenizers carry these (no-op after the space replacement) stages.
    json.normalizer = { type: 'Sequence', normalizers: [json.normalizer] };
    json.pre_tokenizer = { type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithPrevious', invert: false };
    json.post_processor = {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<bos>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<bos>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<bos>': { id: '<bos>', ids: [2], tokens: ['<bos>'] } },
    };
    const cfg = {
      ...(JSON.parse(files.tokenizerConfigJson) as object),
      bos_token: { content: '<bos>' },
      image_token: '<|image|>',
    };
    const real = PackageTokenizer.fromJson(JSON.stringify(json), JSON.stringify(cfg));
    for (const text of SAMPLES) {
      expect(real.encode(text)).toEqual(plain.encode(text));
      expect(real.decode(real.encode(text))).toBe(text);
    }
    expect(real.encode('hi there', { addSpecialTokens: true })).toEqual([2, ...plain.encode('hi there')]);
    expect(real.special.bos).toBe(2);
  });

  it('refuses a tokenizer without its bos token', () => {
    const files = synthTokenizerFiles(512);
    const cfg = { ...(JSON.parse(files.tokenizerConfigJson) as object), bos_token: '<nope>' };
    expect(() => PackageTokenizer.fromJson(files.tokenizerJson, JSON.stringify(cfg))).toThrow(/bos/);
  });
});
