/**
 * Child-process entry that writes one prepacked cache entry (prepacked-cache.ts): it opens the source model
 * once with ORT told to save the optimised graph, prepacked weights included, into outDir. Argument: JSON
 * { modelPath, outDir, tuning }. Exit 0 when both files are written.
 */
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { realignExternalData } from '../onnx/realign.js';
import { PREPACKED_DATA_FILE, PREPACKED_MODEL_FILE } from './prepacked-cache.js';
import { type SessionTuning, sessionOptions } from './session.js';

const { modelPath, outDir, tuning } = JSON.parse(process.argv[2] ?? '{}') as {
  modelPath: string;
  outDir: string;
  tuning: SessionTuning;
};
const saving: SessionTuning = {
  ...tuning,
  configEntries: {
    ...tuning.configEntries,
    'session.save_external_prepacked_constant_initializers': '1',
    'session.optimized_model_external_initializers_file_name': PREPACKED_DATA_FILE,
    'session.optimized_model_external_initializers_min_size_in_bytes': '1024',
  },
};
// logSeverityLevel 3: ORT warns that a graph optimised at the highest level is CPU-specific; this cache is, by its key.
const session = await ort.InferenceSession.create(modelPath, {
  ...sessionOptions(saving),
  optimizedModelFilePath: join(outDir, PREPACKED_MODEL_FILE),
  logSeverityLevel: 3,
});
await session.release();
// ORT appends the blobs at unaligned offsets, which some packed layouts cannot be mapped back from (realign.ts).
await realignExternalData(join(outDir, PREPACKED_MODEL_FILE));
