/**
 * The anchor check every backend makes when it opens a store, after reading what is stored and before
 * changing anything: the audit log records the store's id and the last generation it saw, and a store
 * behind that, or another store, is refused (see types.ts).
 */
import type { StoreAnchor } from './types.js';
import { StateError } from './types.js';

/** Checks that anchor.seq is a non-negative integer (an option error: a plain Error). */
export function checkAnchorOption(anchor: StoreAnchor | undefined): void {
  if (anchor && (!Number.isSafeInteger(anchor.seq) || anchor.seq < 0)) {
    throw new Error('anchor.seq is a non-negative integer');
  }
}

/**
 * Throws STATE_ROLLBACK or STATE_FOREIGN unless the store found at `place` (storeId undefined: no store
 * at all) is the one the anchor names, at its generation or later.
 */
export function checkAnchor(
  place: string,
  anchor: StoreAnchor | undefined,
  storeId: string | undefined,
  seq: number,
): void {
  if (!anchor) return;
  if (storeId === undefined && (anchor.seq > 0 || anchor.storeId !== undefined)) {
    throw new StateError(
      'STATE_ROLLBACK',
      `${place} holds no state store, but the audit log records store ` +
        `${anchor.storeId ?? '(unnamed)'} at generation ${anchor.seq}: the state files are missing; ` +
        'restore them from a backup',
    );
  }
  if (anchor.storeId !== undefined && anchor.storeId !== storeId) {
    throw new StateError(
      'STATE_FOREIGN',
      `the state store in ${place} is ${storeId}, but the audit log names ` +
        `${anchor.storeId}: these are another store's files`,
    );
  }
  if (seq < anchor.seq) {
    throw new StateError(
      'STATE_ROLLBACK',
      `the state store in ${place} is at generation ${seq}, older than ` +
        `generation ${anchor.seq} recorded in the audit log: an older copy was put back, or acknowledged writes ` +
        'are missing',
    );
  }
}
