/**
 * The values of `sops:` secrets: each secret's SOPS file is read from the commit being applied and
 * opened with the daemon's age identity (the file must list the daemon's recipient, next to the
 * people's who edit it), the MAC checked, and the value at `key` taken. A file that cannot be read is
 * not a reason to refuse the whole commit: that secret keeps its current version and says why. So
 * is a value SOPS left in clear (SOPS_VALUE_CLEARTEXT, as rotor-agent refuses one for its admin
 * passwords): anyone who can read the repository can read it, so it is not served.
 */

import { git } from '../git/run.js';
import type { Desired } from '../model/model.js';
import type { ManualValue } from '../rotation/engine.js';
import type { SopsValue } from '../sops/index.js';
import { MAX_SOPS_FILE_BYTES, openSops, SopsError, sopsCleartextMessage, sopsFormatOf } from '../sops/index.js';

/** A scalar of a SOPS file as the value rotor serves: strings as they are, numbers and booleans as written. */
function scalarText(v: SopsValue): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return String(v);
  return undefined;
}

export async function readSopsValues(
  repoDir: string,
  commit: string,
  desired: Desired,
  identity: string,
): Promise<Map<string, ManualValue>> {
  const out = new Map<string, ManualValue>();
  const opened = new Map<string, Promise<Awaited<ReturnType<typeof openSops>>>>();
  for (const [name, { decl }] of desired.secrets) {
    if (!decl.sops) continue;
    const { file, key } = decl.sops;
    try {
      let doc = opened.get(file);
      if (!doc) {
        doc = git(repoDir, ['cat-file', 'blob', `${commit}:${file}`], { maxBuffer: MAX_SOPS_FILE_BYTES + 1 }).then(
          (buf) => openSops(buf, identity, { format: sopsFormatOf(file), name: file }),
        );
        opened.set(file, doc);
      }
      const entry = (await doc).get(key);
      if (!entry) {
        out.set(name, {
          error: { code: 'SOPS_KEY_MISSING', message: `${file} has no key "${key}" (nested keys are joined by ".")` },
        });
        continue;
      }
      const text = scalarText(entry.value);
      if (text === undefined || text === '') {
        out.set(name, {
          error: {
            code: 'SOPS_VALUE_INVALID',
            message: `"${key}" in ${file} is ${text === '' ? 'empty' : 'not a single value (a mapping, a list, binary or null)'}; point sops.key at a non-empty string`,
          },
        });
        continue;
      }
      if (!entry.encrypted) {
        out.set(name, { error: { code: 'SOPS_VALUE_CLEARTEXT', message: sopsCleartextMessage(file, key) } });
        continue;
      }
      out.set(name, { value: text });
    } catch (e) {
      const code = e instanceof SopsError ? e.code : 'SOPS_READ_FAILED';
      // SopsError messages carry no values; anything else is reduced to its code.
      const message =
        e instanceof SopsError ? e.message : `${file} could not be read from commit ${commit.slice(0, 12)}`;
      out.set(name, { error: { code, message } });
    }
  }
  return out;
}
