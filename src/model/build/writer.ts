/**
 * Builds a package directory: files are added one by one (their size and sha256 computed while they are
 * written, or by streaming them back when another writer, e.g. the ONNX GraphBuilder, produced them), and
 * manifest.json is written last, atomically, so an interrupted build never looks complete.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, readdir, rename, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writePleFile, type PleWriteOptions, type RowProducer } from '../ple/writer.js';
import type { PleLayout } from '../ple/format.js';
import { hashFile } from '../package/verify.js';
import {
  MANIFEST_FILE,
  PACKAGE_FORMAT_VERSION,
  PACKAGE_FILES,
  type FileEntry,
  type FileRole,
  type Manifest,
} from '../package/manifest.js';

/** Perch's version from its package.json (found upward from this file: works from src/ and dist/). */
export function perchVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'perch' && pkg.version) return pkg.version;
    } catch {
      // not here; keep walking up
    }
    const up = dirname(dir);
    if (up === dir) return 'unknown';
    dir = up;
  }
}

export class PackageWriter {
  private readonly files: FileEntry[] = [];

  private constructor(readonly dir: string) {}

  /** Creates `dir`; refuses a non-empty directory so an old package is never half-overwritten. */
  static async create(dir: string): Promise<PackageWriter> {
    await mkdir(dir, { recursive: true });
    const existing = await readdir(dir);
    if (existing.length > 0) throw new Error(`${dir}: output directory is not empty`);
    return new PackageWriter(dir);
  }

  path(name: string): string {
    return join(this.dir, name);
  }

  /** Writes a small file (config, tokenizer, template) and records it. */
  async addFile(name: string, role: FileRole, content: string | Uint8Array): Promise<FileEntry> {
    const bytes = typeof content === 'string' ? Buffer.from(content, 'utf8') : content;
    await writeFile(this.path(name), bytes);
    return this.record({
      path: name,
      role,
      bytes: bytes.byteLength,
      sha256: createHash('sha256').update(bytes).digest('hex'),
    });
  }

  /** Streams the PLE table into the package (hashing as it goes). */
  async addPle(
    layout: PleLayout,
    produce: RowProducer,
    opts: PleWriteOptions = {},
    name: string = PACKAGE_FILES.ple,
  ): Promise<FileEntry> {
    const r = await writePleFile(this.path(name), layout, produce, opts);
    return this.record({ path: name, role: 'ple', bytes: r.bytes, sha256: r.sha256 });
  }

  /** Records a file something else already wrote into the package directory. */
  async addExisting(name: string, role: FileRole, onBytes?: (n: number) => void): Promise<FileEntry> {
    const st = await stat(this.path(name));
    if (!st.isFile()) throw new Error(`${this.path(name)}: not a regular file`);
    const h = await hashFile(this.path(name), onBytes);
    return this.record({ path: name, role, ...h });
  }

  /** Writes manifest.json (last) and returns it. */
  async finish(fields: Omit<Manifest, 'format_version' | 'created_by' | 'created_at' | 'files'>): Promise<Manifest> {
    const manifest: Manifest = {
      format_version: PACKAGE_FORMAT_VERSION,
      created_by: `perch ${perchVersion()}`,
      created_at: new Date().toISOString(),
      ...fields,
      files: [...this.files],
    };
    const tmp = this.path(`${MANIFEST_FILE}.partial`);
    await writeFile(tmp, JSON.stringify(manifest, null, 2) + '\n');
    await rename(tmp, this.path(MANIFEST_FILE));
    return manifest;
  }

  private record(e: FileEntry): FileEntry {
    if (this.files.some((f) => f.path === e.path)) throw new Error(`${e.path} added to the package twice`);
    this.files.push(e);
    return e;
  }
}
