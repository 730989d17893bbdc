// The write sequence of the store-kill proof (prove/4-tamper.mjs and its child, store-writer.mjs): write
// number n is a fixed batch, so that the state after the first m writes is known exactly and a store
// opened after a kill can be compared with it as a whole: a batch applied in part, a batch lost after
// it was acknowledged, or a later batch applied without an earlier one would all show.

/** The batch of write n (1, 2, ...): a counter, a slot rewritten, sometimes a delete or a large value. */
export function opsFor(n) {
  const ops = [
    { op: 'put', key: 'counter', value: n },
    { op: 'put', key: `slot/${n % 16}`, value: { n, pad: 'p'.repeat((n * 37) % 700) } },
  ];
  if (n % 5 === 0) ops.push({ op: 'delete', key: `slot/${(n + 8) % 16}` });
  if (n % 97 === 0) ops.push({ op: 'put', key: 'large', value: { n, data: 'l'.repeat(60_000 + (n % 1000)) } });
  return ops;
}

/** The state after writes 1..m, as canonical JSON (keys sorted). */
export function stateAfter(m) {
  const data = new Map();
  for (let n = 1; n <= m; n++) {
    for (const op of opsFor(n)) {
      if (op.op === 'put') data.set(op.key, op.value);
      else data.delete(op.key);
    }
  }
  return canonical(data);
}

/** Canonical JSON of a key -> value map (keys sorted). */
export function canonical(entries) {
  return JSON.stringify([...entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}
