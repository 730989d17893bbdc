/**
 * A state store backend held in memory, for tests: what "durable" means is "in the MemoryPlace", which
 * outlives the StateStore objects opened on it. It keeps the StateStore contract (src/state/types.ts)
 * with the helpers every backend shares, and so shows that test/lib/store-contract.ts asks nothing of a
 * backend but the contract. No encryption: nothing leaves the process.
 */
import { randomUUID } from 'node:crypto';
import { checkAnchor, checkAnchorOption } from '../../src/state/anchor.js';
import type { Json, Op, StateStore, StoreBackend, StoreOpenOptions } from '../../src/state/index.js';
import type { Batch } from '../../src/state/values.js';
import { prepareBatch } from '../../src/state/values.js';

/** What a memory store keeps "durably": survives close and reopen. */
export interface MemoryPlace {
  stored?: { storeId: string; seq: number; data: Map<string, Json> };
}

export function memoryStoreBackend(place: MemoryPlace): StoreBackend {
  return {
    async open(options: StoreOpenOptions): Promise<StateStore> {
      checkAnchorOption(options.anchor);
      checkAnchor('memory', options.anchor, place.stored?.storeId, place.stored?.seq ?? 0);
      place.stored ??= { storeId: randomUUID(), seq: 0, data: new Map() };
      return new MemoryStore(place.stored);
    },
  };
}

function apply(data: Map<string, Json>, ops: readonly Op[]): void {
  for (const op of ops) {
    if (op.op === 'put') data.set(op.key, op.value);
    else data.delete(op.key);
  }
}

class MemoryStore implements StateStore {
  readonly storeId: string;
  private seqValue: number;
  private readonly data: Map<string, Json>;
  private pending: { batch: Batch; resolve(seq: number): void }[] = [];
  private flushing: Promise<void> | undefined;
  private closed = false;

  constructor(private readonly durable: { storeId: string; seq: number; data: Map<string, Json> }) {
    this.storeId = durable.storeId;
    this.seqValue = durable.seq;
    this.data = new Map(durable.data);
  }

  get seq(): number {
    return this.seqValue;
  }

  get(key: string): Json | undefined {
    return this.data.get(key);
  }

  *entries(prefix = ''): IterableIterator<[string, Json]> {
    for (const key of [...this.data.keys()].sort()) if (key.startsWith(prefix)) yield [key, this.data.get(key)!];
  }

  write(ops: readonly Op[]): Promise<number> {
    if (this.closed) return Promise.reject(new Error('the state store is closed'));
    let batch: Batch;
    try {
      batch = prepareBatch(ops);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise((resolve) => {
      this.pending.push({ batch, resolve });
      this.flushing ??= this.flush();
    });
  }

  /** Commits every waiting batch as one group, a turn of the event loop later. */
  private async flush(): Promise<void> {
    await new Promise((r) => setImmediate(r));
    const group = this.pending.splice(0);
    for (const { batch } of group) {
      apply(this.durable.data, batch.ops);
      this.durable.seq += 1;
    }
    const first = this.seqValue + 1;
    for (const { batch } of group) apply(this.data, batch.ops);
    this.seqValue = this.durable.seq;
    this.flushing = undefined;
    group.forEach((p, i) => {
      p.resolve(first + i);
    });
  }

  compact(): Promise<void> {
    return this.closed ? Promise.reject(new Error('the state store is closed')) : Promise.resolve();
  }

  async close(): Promise<void> {
    this.closed = true;
    while (this.flushing) await this.flushing;
  }
}
