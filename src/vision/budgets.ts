/** Image token budgets: Gemma 4's allowed max_soft_tokens (kept apart from preprocess.ts so the config schema loads no image code). */
export const SOFT_TOKEN_BUDGETS = [70, 140, 280, 560, 1120] as const;
export type TokenBudget = (typeof SOFT_TOKEN_BUDGETS)[number];
/** The processor's default max_soft_tokens, and Perch's image budget unless a camera or request sets one. */
export const DEFAULT_IMAGE_TOKENS = 280;
