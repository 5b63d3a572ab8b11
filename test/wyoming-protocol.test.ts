/**
 * The Wyoming framing and the PCM conversion at the edge, on bytes the real Python package writes (copied from
 * wyoming 1.10.2's own output) and on hostile ones.
 */
import { describe, expect, it } from 'vitest';
import { PcmConverter, checkPcmFormat } from '../src/audio/pcm.js';
import { EventReader, ProtocolError, encodeEvent, hasStreamingEvents } from '../src/wyoming/protocol.js';

const limits = { maxHeaderBytes: 64 * 1024, maxBlockBytes: 1024 };
/** What wyoming 1.10.2 wrote for describe, an audio chunk of two samples and audio-stop (one stream). */
const PYTHON_BYTES = Buffer.concat([
  Buffer.from('{"type": "describe", "version": "1.10.2"}\n'),
  Buffer.from('{"type": "audio-chunk", "version": "1.10.2", "data_length": 61, "payload_length": 4}\n'),
  Buffer.from('{"rate": 16000, "width": 2, "channels": 1, "timestamp": null}'),
  Buffer.from([1, 0, 2, 0]),
  Buffer.from('{"type": "audio-stop", "version": "1.10.2", "data_length": 19}\n{"timestamp": null}'),
]);

describe('Wyoming framing', () => {
  it("reads the Python package's bytes, cut at every byte boundary, as the same three events", () => {
    const whole = new EventReader(limits).push(PYTHON_BYTES);
    expect(whole.map((e) => e.type)).toEqual(['describe', 'audio-chunk', 'audio-stop']);
    expect(whole[1]!.data).toEqual({ rate: 16000, width: 2, channels: 1, timestamp: null });
    expect([...whole[1]!.payload!]).toEqual([1, 0, 2, 0]);
    expect(whole[1]!.version).toBe('1.10.2');
    for (let cut = 1; cut < PYTHON_BYTES.length; cut++) {
      const r = new EventReader(limits);
      const events = [...r.push(PYTHON_BYTES.subarray(0, cut)), ...r.push(PYTHON_BYTES.subarray(cut))];
      expect(events).toEqual(whole);
    }
  });

  it('merges a data block over inline data, takes \\r\\n, and writes what it reads', () => {
    const [ev] = new EventReader(limits).push(
      Buffer.from(
        '{"type": "transcribe", "data": {"language": "en", "name": "a"}, "data_length": 15}\r\n{"name": "b"}  ',
      ),
    );
    expect(ev!.data).toEqual({ language: 'en', name: 'b' });
    const bytes = encodeEvent('transcript', { text: 'grüß dich' }, Buffer.from([9]));
    const header = JSON.parse(bytes.subarray(0, bytes.indexOf(10)).toString());
    // Lengths in bytes (ü and ß are two each), data as a separate block, no newline after either block.
    expect(header).toEqual({ type: 'transcript', version: '1.10.2', data_length: 22, payload_length: 1 });
    expect(bytes.at(-1)).toBe(9);
    const [back] = new EventReader(limits).push(bytes);
    expect(back).toMatchObject({ type: 'transcript', data: { text: 'grüß dich' } });
    expect(encodeEvent('audio-stop').toString()).toBe('{"type":"audio-stop","version":"1.10.2"}\n');
  });

  it.each([
    ['not JSON', 'hello\n', /header is not JSON/],
    ['an array', '[1]\n', /not a JSON object/],
    ['no type', '{"data": {}}\n', /no type/],
    ['a long type', `{"type": "${'x'.repeat(65)}"}\n`, /no type/],
    ['data not an object', '{"type": "a", "data": [1]}\n', /data must be an object/],
    ['a negative length', '{"type": "a", "payload_length": -1}\n', /whole number/],
    ['a fractional length', '{"type": "a", "data_length": 1.5}\n', /whole number/],
    ['a payload over the limit', '{"type": "a", "payload_length": 1025}\n', /over the limit of 1024/],
    ['data over the limit', '{"type": "a", "data_length": 5000}\n', /over the limit/],
    ['a bad data block', '{"type": "a", "data_length": 3}\n[1]', /event data is not a JSON object/],
    ['an empty line', '\n', /empty event header/],
  ])('refuses %s with a clear error', (_what, bytes, message) => {
    expect(() => new EventReader(limits).push(Buffer.from(bytes))).toThrow(message);
  });

  it('refuses a header line longer than the limit before it ends', () => {
    const r = new EventReader({ maxHeaderBytes: 100, maxBlockBytes: 1024 });
    expect(() => r.push(Buffer.from(`{"type": "${'a'.repeat(200)}`))).toThrow(ProtocolError);
  });

  it('knows which peers have the streaming events (1.7.0 on)', () => {
    expect([undefined, '1.6.2', '1.5.4', 'x'].map(hasStreamingEvents)).toEqual([false, false, false, false]);
    expect(['1.7.0', '1.10.2', '2.0.0'].map(hasStreamingEvents)).toEqual([true, true, true]);
  });
});

describe('PCM from the network to 16 kHz mono', () => {
  const stereo48k = (frames: number): Buffer => {
    const b = Buffer.alloc(frames * 4);
    for (let i = 0; i < frames; i++) {
      const v = Math.round(8000 * Math.sin(i / 7));
      b.writeInt16LE(v, i * 4);
      b.writeInt16LE(v + 100, i * 4 + 2);
    }
    return b;
  };

  it('averages channels and resamples, the same however the stream is cut (odd byte cuts included)', () => {
    const fmt = { rate: 48000, width: 2, channels: 2 };
    const bytes = stereo48k(4800);
    const whole = new PcmConverter(fmt).push(bytes);
    expect(whole.length).toBeGreaterThanOrEqual(1599);
    expect(whole.length).toBeLessThanOrEqual(1600);
    // Output j is input 3j (48k -> 16k): the mean of the two channels there.
    for (const j of [0, 1, 10, 500]) expect(whole[j]).toBe(Math.round(8000 * Math.sin((3 * j) / 7)) + 50);
    for (const cut of [1, 3, 333, 2047, 9601]) {
      const c = new PcmConverter(fmt);
      const parts = [c.push(bytes.subarray(0, cut)), c.push(bytes.subarray(cut))];
      expect(Int16Array.from(parts.flatMap((p) => [...p]))).toEqual(whole);
    }
  });

  it('interpolates between samples on rates that do not divide (22,050 Hz)', () => {
    const fmt = { rate: 22050, width: 2, channels: 1 };
    const b = Buffer.alloc(2 * 100);
    for (let i = 0; i < 100; i++) b.writeInt16LE(i * 10, i * 2);
    const out = new PcmConverter(fmt).push(b);
    // A ramp stays a ramp: output j sits at input j * 22050 / 16000.
    for (let j = 0; j < out.length; j++) expect(out[j]).toBe(Math.round((j * 22050 * 10) / 16000));
    expect(out.length).toBe(Math.floor((99 * 16000) / 22050) + 1);
  });

  it('passes 16 kHz mono through unchanged', () => {
    const b = Buffer.from([1, 0, 255, 255, 0, 128]);
    expect([...new PcmConverter({ rate: 16000, width: 2, channels: 1 }).push(b)]).toEqual([1, -1, -32768]);
  });

  it('names what is wrong with a format', () => {
    expect(checkPcmFormat({ rate: 16000, width: 4, channels: 1 })).toMatch(/width must be 2/);
    expect(checkPcmFormat({ rate: 4000, width: 2, channels: 1 })).toMatch(/rate must be 8000 to 48000/);
    expect(checkPcmFormat({ rate: '16000', width: 2, channels: 1 })).toMatch(/rate/);
    expect(checkPcmFormat({ rate: 16000, width: 2, channels: 0 })).toMatch(/channels/);
    expect(checkPcmFormat({ rate: 16000, width: 2, channels: 1 })).toEqual({ rate: 16000, width: 2, channels: 1 });
  });
});
