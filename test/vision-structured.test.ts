/**
 * Structured captions, the pure part: the config's JSON schema compiles to a validator (bad schemas are refused
 * when the config loads), replies are parsed and validated, invalid ones are asked again with the reason, and
 * after the retries the failure says what was wrong.
 */
import { describe, expect, it } from 'vitest';
import { perchConfigSchema } from '../src/config/schema.js';
import {
  compileStructured,
  generateStructured,
  InvalidOutputError,
  parseStructured,
  structuredPrompt,
  type JsonSchemaObject,
} from '../src/common/structured-output.js';

const schema: JsonSchemaObject = {
  type: 'object',
  properties: {
    people: { type: 'integer', minimum: 0 },
    vehicles: { type: 'integer', minimum: 0 },
    summary: { type: 'string' },
    concern: { enum: ['low', 'medium', 'high'] },
  },
  required: ['people', 'summary', 'concern'],
};
const validator = compileStructured(schema);
const good = { people: 2, vehicles: 0, summary: 'Two people at the gate.', concern: 'low' };

describe('parseStructured', () => {
  it('accepts a matching object, also inside code fences or text around it', () => {
    expect(parseStructured(JSON.stringify(good), validator)).toEqual({ ok: true, data: good });
    expect(parseStructured('```json\n' + JSON.stringify(good) + '\n```', validator)).toEqual({ ok: true, data: good });
    expect(parseStructured(`Here it is: ${JSON.stringify(good)} done`, validator)).toEqual({ ok: true, data: good });
  });

  it('refuses replies that are not JSON or break the schema, naming why', () => {
    expect(parseStructured('A person walks by.', validator)).toEqual({
      ok: false,
      reason: 'no JSON object in the reply',
    });
    expect(parseStructured('{people: 1}', validator)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/^not valid JSON/),
    });
    expect(parseStructured(JSON.stringify({ ...good, people: 1.5 }), validator)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/people/),
    });
    expect(parseStructured(JSON.stringify({ ...good, concern: 'extreme' }), validator)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/concern/),
    });
    const { summary: _s, ...noSummary } = good;
    expect(parseStructured(JSON.stringify(noSummary), validator)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/summary/),
    });
    expect(parseStructured(`{"summary":"${'x'.repeat(30_000)}"}`, validator)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/longer than/),
    });
  });
});

describe('generateStructured', () => {
  it('returns the first valid reply and stops asking', async () => {
    const prompts: string[] = [];
    const replies = ['no json here', JSON.stringify(good), 'never asked'];
    const r = await generateStructured(
      async (p, attempt) => {
        prompts.push(p);
        return replies[attempt - 1]!;
      },
      { prompt: 'What is there?', schema, validator, retries: 2 },
    );
    expect(r).toEqual({ data: good, text: JSON.stringify(good), attempts: 2 });
    expect(prompts).toHaveLength(2);
    expect(prompts[0]).toBe(structuredPrompt('What is there?', schema));
    expect(prompts[0]).toContain(JSON.stringify(schema));
    // The retry says what was wrong with the previous reply.
    expect(prompts[1]).toContain('no JSON object in the reply');
  });

  it('after 1 + retries invalid replies throws InvalidOutputError with the last reason', async () => {
    let calls = 0;
    const invalid: Array<[number, string]> = [];
    const err = await generateStructured(
      async () => {
        calls++;
        return '{"people": -1, "summary": "x", "concern": "low"}';
      },
      {
        prompt: 'p',
        schema,
        validator,
        retries: 2,
        onInvalid: (attempt, reason) => invalid.push([attempt, reason]),
      },
    ).catch((e: unknown) => e);
    expect(calls).toBe(3);
    expect(invalid.map(([a]) => a)).toEqual([1, 2, 3]);
    expect(err).toBeInstanceOf(InvalidOutputError);
    expect(err).toMatchObject({
      attempts: 3,
      message: expect.stringMatching(/after 3 attempts: does not match the schema: people/),
    });
  });

  it('retries 0 asks once; errors of generate pass through untouched', async () => {
    let calls = 0;
    await expect(
      generateStructured(
        async () => {
          calls++;
          return 'nope';
        },
        { prompt: 'p', schema, validator, retries: 0 },
      ),
    ).rejects.toThrow(InvalidOutputError);
    expect(calls).toBe(1);
    const boom = new Error('engine gone');
    await expect(
      generateStructured(async () => Promise.reject(boom), { prompt: 'p', schema, validator, retries: 2 }),
    ).rejects.toBe(boom);
  });
});

describe('config', () => {
  const camera = (extra: Record<string, unknown>) =>
    perchConfigSchema.safeParse({
      cameras: [{ name: 'gate', source: { type: 'directory', path: '/tmp/x' }, ...extra }],
    });

  it('takes an object schema, with structured_retries defaulting to 2', () => {
    const r = camera({ structured: schema });
    expect(r.success).toBe(true);
    expect(r.data?.cameras[0]).toMatchObject({ structured: schema, structured_retries: 2 });
    expect(camera({}).data?.cameras[0]?.structured).toBeUndefined();
  });

  it('refuses schemas that are not usable object schemas', () => {
    expect(camera({ structured: { type: 'string' } }).error?.message).toMatch(/type: object/);
    expect(camera({ structured: { type: 'object', properties: { a: { type: 'bogus' } } } }).error?.message).toMatch(
      /not a usable JSON schema/,
    );
    expect(camera({ structured: schema, structured_retries: 9 }).success).toBe(false);
  });
});
