/**
 * The model package manifest (manifest.json): what the package holds, where it came from, how it was
 * quantised, and every file's size and sha256. Written last by the package writer, so a directory without it
 * is an unfinished package. models/README.md documents the format.
 */
import { z } from 'zod';

export const PACKAGE_FORMAT_VERSION = 1;
export const MANIFEST_FILE = 'manifest.json';

/** Conventional file names inside a package. */
export const PACKAGE_FILES = {
  config: 'config.json',
  decoderGraph: 'decoder.onnx',
  decoderWeights: 'decoder.onnx.data',
  ple: 'ple.bin',
  tokenizer: 'tokenizer.json',
  tokenizerConfig: 'tokenizer_config.json',
  chatTemplate: 'chat_template.jinja',
  /** Optional: present when the model has a vision / audio encoder (names the engine looks for). */
  visionGraph: 'vision_encoder.onnx',
  visionWeights: 'vision_encoder.onnx.data',
  audioGraph: 'audio_encoder.onnx',
  audioWeights: 'audio_encoder.onnx.data',
} as const;

export const fileRoles = [
  'config',
  'decoder-graph',
  'decoder-weights',
  'ple',
  'tokenizer',
  'tokenizer-config',
  'chat-template',
  'vision-graph',
  'vision-weights',
  'audio-graph',
  'audio-weights',
  'other',
] as const;
export type FileRole = (typeof fileRoles)[number];
/** Roles a loadable package must have (the chat template may live in tokenizer_config.json instead; encoders are optional). */
/** Every package has these; 'ple' too when its model has per-layer embeddings (Gemma 4, not Gemma 3). */
export const REQUIRED_ROLES: readonly FileRole[] = ['config', 'decoder-graph', 'decoder-weights', 'tokenizer'];

/** A relative path that stays inside the package directory. */
const packagePath = z
  .string()
  .min(1)
  .max(255)
  .refine(
    (p) => !p.startsWith('/') && !p.includes('\\') && p.split('/').every((s) => s !== '' && s !== '.' && s !== '..'),
    'a relative path inside the package',
  );

export const fileEntrySchema = z.object({
  path: packagePath,
  role: z.enum(fileRoles),
  bytes: z.number().int().min(0),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type FileEntry = z.output<typeof fileEntrySchema>;

/** pi5 / pi4: board profiles; float: unquantised decoder (tests and debugging, E2B would be ~8 GB). */
export const profiles = ['pi5', 'pi4', 'float'] as const;
export type Profile = (typeof profiles)[number];

const bitsSchema = z.union([z.literal(2), z.literal(4), z.literal(8)]);
export const linearKernels = ['matmul-nbits', 'int8-channels'] as const;
const linearKernelSchema = z.enum(linearKernels);
export type LinearKernel = (typeof linearKernels)[number];

/**
 * Mixed policy (src/model/build/mixed.ts): a Linear whose measured error at `bits` is at least
 * `min_error_ratio` x the median over all linears is kept at `promote.bits`, worst first, while the
 * promoted weights stay within `max_fraction` of all linear weights.
 */
const promoteSchema = z.object({
  bits: bitsSchema,
  min_error_ratio: z.number().min(1),
  max_fraction: z.number().min(0).max(1),
});

/** One Linear's decision under a mixed policy: its bits and its measured relative error at linear.bits. */
const tensorDecisionSchema = z.object({
  name: z.string().min(1).max(300),
  bits: bitsSchema,
  base_error: z.number().min(0),
});
export type TensorDecision = z.output<typeof tensorDecisionSchema>;

export const quantPolicySchema = z.object({
  profile: z.enum(profiles),
  linear: z
    .object({
      bits: bitsSchema,
      block_size: z.number().int().min(16),
      accuracy_level: z.number().int().min(0).max(4),
      method: z.enum(['search', 'rtn']),
      promote: promoteSchema.optional(),
      /**
       * matmul-nbits (default): ORT's MatMulNBits with bits / block_size / accuracy_level. int8-channels:
       * symmetric int8 per output channel, activations int8 per row, MatMulInteger (bits 8; block_size and
       * accuracy_level do not apply, method only to the embedding): the integer path of CPUs without
       * dot-product instructions.
       */
      kernel: linearKernelSchema.optional(),
    })
    .refine(
      (l) => l.kernel !== 'int8-channels' || (l.bits === 8 && !l.promote),
      'int8-channels linears are 8-bit and not mixed',
    )
    .nullable(),
  embedding: z
    .object({
      bits: z.union([z.literal(4), z.literal(8)]),
      block_size: z.number().int().min(16),
      /** tied (default): the LM head reads the embedding's bytes; int8-channels: its own int8 copy (see kernel). */
      lm_head: z.enum(['tied', 'int8-channels']).optional(),
    })
    .nullable(),
  ple: z.object({
    bits: bitsSchema,
    block_size: z.number().int().min(8),
    scale_type: z.literal('f16-scale-u8-zero-point'),
  }),
  /** Per-Linear decisions of a mixed policy (absent: every Linear at linear.bits). */
  tensors: z.array(tensorDecisionSchema).max(10_000).optional(),
});
export type QuantPolicy = z.output<typeof quantPolicySchema>;

export const manifestSchema = z.object({
  format_version: z.number().int(),
  created_by: z.string().min(1),
  created_at: z.string().optional(),
  source: z.object({
    kind: z.enum(['convert', 'synth', 'pull']),
    model: z.string().min(1),
    revision: z.string().optional(),
    checkpoint_sha256: z.string().optional(),
    preset: z.string().optional(),
    seed: z.number().int().optional(),
  }),
  config: z.record(z.string(), z.unknown()),
  quantisation: quantPolicySchema,
  files: z.array(fileEntrySchema).min(1),
});
export type Manifest = z.output<typeof manifestSchema>;

/**
 * pi5 (the size bar: a decoder of at most 0.75 GB; models/README.md has the arithmetic and the measured
 * errors): linears 2-bit, block 128 (2.27 bits/weight with the f32 scale and packed zero point), int8
 * activations (accuracy_level 4: the Cortex-A76's fast dot-product path); the worst outliers by measured
 * 2-bit error kept at 4 bits within 0.6% of the linear weights; the tied embedding / LM head 4-bit, block
 * 256.
 * pi4: the Cortex-A72 has no dot-product instructions, so every MatMulNBits runs a float path there (measured
 * under emulation per weight at one token: 2.7 instructions at 4 bits, 17 at 8, 38 at 2; models/README.md):
 * the linears and the LM head are int8 per output channel through MatMulInteger instead (0.38
 * instructions per weight, integer multiply-accumulate without dot products), twice the bytes of 4-bit
 * for a seventh of the work. The embedding lookup stays 4-bit, block 64: it reads one row per token.
 * The PLE table is 4-bit, block 32 on both: 2-bit loses ~40% RMS on it.
 */
export function quantPolicyFor(profile: Profile): QuantPolicy {
  const ple = { bits: 4, block_size: 32, scale_type: 'f16-scale-u8-zero-point' } as const;
  if (profile === 'float') return { profile, linear: null, embedding: null, ple };
  if (profile === 'pi5') {
    return {
      profile,
      linear: {
        bits: 2,
        block_size: 128,
        accuracy_level: 4,
        method: 'search',
        promote: { bits: 4, min_error_ratio: 1.2, max_fraction: 0.006 },
      },
      embedding: { bits: 4, block_size: 256 },
      ple,
    };
  }
  return {
    profile,
    linear: { bits: 8, block_size: 64, accuracy_level: 0, method: 'search', kernel: 'int8-channels' },
    embedding: { bits: 4, block_size: 64, lm_head: 'int8-channels' },
    ple,
  };
}

/** Parses manifest text; returns the problem (not a throw) so verify can list it with the rest. */
export function parseManifest(text: string): { manifest: Manifest } | { error: string } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return { error: `not valid JSON (${(e as Error).message})` };
  }
  const version = (json as { format_version?: unknown } | null)?.format_version;
  if (typeof version === 'number' && version !== PACKAGE_FORMAT_VERSION) {
    return { error: `unknown format_version ${version} (this Perch reads ${PACKAGE_FORMAT_VERSION})` };
  }
  const r = manifestSchema.safeParse(json);
  if (!r.success) {
    const first = r.error.issues[0]!;
    return { error: `invalid manifest at ${first.path.join('.') || '(root)'}: ${first.message}` };
  }
  return { manifest: r.data };
}
