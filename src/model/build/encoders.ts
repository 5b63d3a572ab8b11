/**
 * The media encoders of a package: when config.json describes a vision_config / audio_config (and the
 * weights hold those towers), the vision and audio encoder graphs are written beside the decoder, 8-bit
 * (their accuracy matters more than their size: E2B's are ~0.3 B weights each). The runtime finds them by
 * file name (src/engine/vision.ts, src/engine/transcriber.ts).
 */
import { parseGemma4AudioConfig } from '../gemma4/audio-config.js';
import { writeAudioEncoderModel } from '../gemma4/audio-graph.js';
import { AUDIO_DEFAULT_LINEAR, uniformAudioPolicy } from '../gemma4/audio-quant.js';
import { parseGemma4VisionConfig } from '../gemma4/vision-config.js';
import { writeVisionEncoderModel } from '../gemma4/vision-graph.js';
import { defaultVisionPolicy } from '../gemma4/vision-quant.js';
import type { WeightSource } from '../gemma4/weights.js';
import { PACKAGE_FILES, type FileRole, type QuantPolicy } from '../package/manifest.js';

export interface EncoderFile {
  name: string;
  role: FileRole;
}

const present = (v: unknown): boolean => typeof v === 'object' && v !== null;

/**
 * Writes the encoders the config describes (unless `which` turns one off) into `dir`; returns their files.
 * A float policy (no linear quantisation) keeps the encoders float too; otherwise the linears are 8-bit
 * with the decoder's quantiser method (synth: rtn, convert: search).
 */
export async function writeEncoders(
  dir: string,
  configJson: Record<string, unknown>,
  weights: WeightSource,
  policy: QuantPolicy,
  which: { vision?: boolean; audio?: boolean } = {},
): Promise<EncoderFile[]> {
  const files: EncoderFile[] = [];
  const method = policy.linear?.method ?? null;
  if (present(configJson.vision_config) && which.vision !== false) {
    const cfg = parseGemma4VisionConfig(configJson);
    await writeVisionEncoderModel(dir, cfg, weights, {
      quant: method ? defaultVisionPolicy(method) : null,
      fusedNorm: true,
      onnxGelu: true,
      // The runtime feeds one unpadded image a run (engine/vision.ts).
      attention: 'unpadded',
      onnxFile: PACKAGE_FILES.visionGraph,
      dataFile: PACKAGE_FILES.visionWeights,
    });
    files.push(
      { name: PACKAGE_FILES.visionGraph, role: 'vision-graph' },
      { name: PACKAGE_FILES.visionWeights, role: 'vision-weights' },
    );
  }
  if (present(configJson.audio_config) && which.audio !== false) {
    const cfg = parseGemma4AudioConfig(configJson);
    await writeAudioEncoderModel(dir, cfg, weights, {
      quant: method ? uniformAudioPolicy({ ...AUDIO_DEFAULT_LINEAR, method }) : null,
      fusedNorm: true,
      // Streaming: hearing encodes speech while it is spoken (engine/audio-encoder.ts runs whole clips through it too).
      streaming: true,
      onnxFile: PACKAGE_FILES.audioGraph,
      dataFile: PACKAGE_FILES.audioWeights,
    });
    files.push(
      { name: PACKAGE_FILES.audioGraph, role: 'audio-graph' },
      { name: PACKAGE_FILES.audioWeights, role: 'audio-weights' },
    );
  }
  return files;
}
