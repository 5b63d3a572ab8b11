import { resolve } from 'node:path';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Two cores: forks keep ONNX Runtime and child processes isolated per file.
    pool: 'forks',
    // Each run's temporary files under one folder, removed when the run ends (test/global-setup.ts).
    globalSetup: ['test/global-setup.ts'],
    // Commands the tests run keep their prepacked weight caches here, not in the user's ~/.cache.
    env: { PERCH_CACHE_DIR: resolve('test/.tmp/perch-cache') },
  },
});
