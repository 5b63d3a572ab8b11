/**
 * Perch's prompt building against transformers' Gemma4Processor, byte for byte: the same chat template
 * (Perch's Gemma 4 format template) rendered by @huggingface/jinja and by transformers' apply_chat_template,
 * tokenised by the same synthetic tokenizer, media placeholders expanded to the same soft-token runs.
 * Fixtures: reference/goldens/template.py (reference/make_goldens.py template).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LogMelExtractor } from '../src/audio/features.js';
import {
  ChatTemplate,
  type ChatMessage,
  type ToolDeclaration,
  encodeChat,
  expandMediaPlaceholders,
} from '../src/engine/prompt.js';
import { PackageTokenizer } from '../src/engine/tokenizer.js';
import { SYNTH_CHAT_TEMPLATE, synthTokenizerFiles } from '../src/model/build/synth-tokenizer.js';
import { wavTo16kMono } from '../src/sources/wav-decode.js';
import { preprocessImage } from '../src/vision/preprocess.js';

const root = join(import.meta.dirname, '..');
const dir = join(root, 'test', 'fixtures', 'golden', 'template');

interface Case {
  name: string;
  messages: ChatMessage[];
  thinking?: boolean;
  tools?: ToolDeclaration[];
  text: string;
  ids: number[];
  image_tokens?: number[];
  audio_tokens?: number[];
}
const golden = JSON.parse(readFileSync(join(dir, 'conversations.json'), 'utf8')) as {
  vocab_size: number;
  wav: string;
  image: string;
  cases: Case[];
};

const files = synthTokenizerFiles(golden.vocab_size);
const tokenizer = PackageTokenizer.fromJson(files.tokenizerJson, files.tokenizerConfigJson);
const template = new ChatTemplate(readFileSync(join(dir, 'chat_template.jinja'), 'utf8'));

/** Soft tokens as Perch counts them: the vision preprocessor (default budget 280) and the log-mel mask. */
async function imageTokens(): Promise<number> {
  return (await preprocessImage(readFileSync(join(root, golden.image)), { tokenBudget: 280 })).numSoftTokens;
}
function audioTokens(): number {
  const { samples } = wavTo16kMono(readFileSync(join(root, golden.wav)));
  const extractor = new LogMelExtractor();
  return extractor.softTokens(extractor.extract(samples).mask);
}

describe('chat template goldens (transformers 5.25 Gemma4Processor)', () => {
  it("the fixture template is the synthetic packages' template", () => {
    expect(readFileSync(join(dir, 'chat_template.jinja'), 'utf8')).toBe(SYNTH_CHAT_TEMPLATE);
  });

  it('covers text, system, thinking on and off, an image, audio, tool declarations, calls and responses', () => {
    expect(golden.cases.map((c) => c.name)).toEqual([
      'text',
      'system',
      'thinking-on',
      'thinking-on-system',
      'thinking-off',
      'image',
      'audio',
      'tools',
      'tools-answered',
    ]);
  });

  for (const c of golden.cases) {
    it(`${c.name}: same text and same token ids`, async () => {
      const { text, ids } = encodeChat(template, tokenizer, c.messages, {
        addGenerationPrompt: true,
        enableThinking: c.thinking ?? false,
        ...(c.tools ? { tools: c.tools } : {}),
      });
      expect(JSON.stringify(text)).toBe(JSON.stringify(c.text));
      const counts = {
        ...(c.image_tokens ? { imageTokens: [await imageTokens()] } : {}),
        ...(c.audio_tokens ? { audioTokens: [audioTokens()] } : {}),
      };
      expect(counts.imageTokens ?? []).toEqual(c.image_tokens ?? []);
      expect(counts.audioTokens ?? []).toEqual(c.audio_tokens ?? []);
      const expanded = expandMediaPlaceholders(ids, tokenizer.special, counts);
      expect(expanded.ids).toEqual(c.ids);
    });
  }
});
