/**
 * The state store contract (test/lib/store-contract.ts) against an in-memory backend (test/lib/memory-store.ts):
 * the contract asks nothing of a backend that is particular to files. The file backend runs it in
 * test/state-store.test.ts.
 */
import t from 'tap';
import type { MemoryPlace } from './lib/memory-store.js';
import { memoryStoreBackend } from './lib/memory-store.js';
import { storeContract } from './lib/store-contract.js';

await storeContract(t, 'memory backend', async () => {
  const place: MemoryPlace = {};
  const backend = memoryStoreBackend(place);
  return {
    open: (options = {}) => backend.open({ identity: 'unused', recipients: [], ...options }),
    cleanup: async () => void delete place.stored,
  };
});
