/**
 * Child-process entry for the bandwidth measurement: `bench` runs it in its own process so the gigabyte
 * buffers never count in the engine process's peak RSS. Argument: JSON BandwidthOptions. Prints the
 * BandwidthResult as JSON on stdout.
 */
import { measureBandwidth, type BandwidthOptions } from './bandwidth.js';

const opts = JSON.parse(process.argv[2] ?? '{}') as BandwidthOptions;
const result = await measureBandwidth(opts);
process.stdout.write(JSON.stringify(result) + '\n');
