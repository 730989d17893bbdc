/**
 * A damaged recipient stanza in snapshot.age (found by the proof, prove/4-tamper.mjs): age
 * reports it as "no identity matched", as it does for the wrong identity. The store must say that the
 * snapshot is damaged (STATE_CORRUPT), since log.bin beside it opens with the same identity; the wrong
 * identity stays STATE_KEY.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { generateX25519Identity, identityToRecipient } from 'age-encryption';
import t from 'tap';
import { openStore } from '../src/state/store.js';
import { tempDir } from './helpers.js';

const IDENTITY = await generateX25519Identity();
const RECIPIENT = await identityToRecipient(IDENTITY);

t.test("a flipped bit in the snapshot's X25519 stanza is damage, not the wrong identity", async (t) => {
  const dir = tempDir(t);
  const store = await openStore({ dir, identity: IDENTITY, recipients: [RECIPIENT] });
  await store.write([{ op: 'put', key: 'k', value: 'v' }]);
  await store.compact();
  await store.close();
  const file = path.join(dir, 'snapshot.age');
  const snap = readFileSync(file);
  const text = snap.toString('latin1');
  const share = text.indexOf('-> X25519 ') + '-> X25519 '.length; // the ephemeral share, then the wrapped file key
  const wrapped = text.indexOf('\n', share) + 1;
  for (const at of [share, share + 20, wrapped + 5]) {
    const b = Buffer.from(snap);
    b[at]! ^= 0x02;
    writeFileSync(file, b);
    await t.rejects(
      openStore({ dir, identity: IDENTITY, recipients: [RECIPIENT] }),
      { name: 'StateError', code: 'STATE_CORRUPT', message: /snapshot\.age .*damaged/ },
      `byte ${at}`,
    );
  }
  writeFileSync(file, snap);
  const wrong = await generateX25519Identity();
  await t.rejects(
    openStore({ dir, identity: wrong, recipients: [await identityToRecipient(wrong)] }),
    { name: 'StateError', code: 'STATE_KEY' },
    'the wrong identity is still STATE_KEY',
  );
  const ok = await openStore({ dir, identity: IDENTITY, recipients: [RECIPIENT] });
  t.equal(ok.get('k'), 'v', 'the undamaged snapshot opens');
  await ok.close();
});
