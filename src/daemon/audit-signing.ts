/**
 * audit.sign: whether the daemon signs its audit commits, following the Config in force (the last
 * applied commit's; at start, the clone's own until the remote's head is applied). The signer it hands
 * to the clones signs in-process with the daemon's Ed25519 key (src/git/sshsig.ts); the key goes
 * nowhere else.
 */
import type { KeyObject } from 'node:crypto';
import { createPublicKey } from 'node:crypto';
import type { CommitSigner } from '../git/repo.js';
import { ed25519Blob, sshFingerprint, sshsigSign } from '../git/sshsig.js';
import type { Logger } from '../log.js';
import type { Config } from '../model/schema-types.js';

export class AuditSigning {
  private on = false;
  private readonly sign: CommitSigner;
  /** The key's OpenSSH fingerprint (public), as `ssh-keygen -l` and forges show it. */
  readonly fingerprint: string;

  constructor(
    key: KeyObject,
    private readonly log: Logger,
  ) {
    this.sign = (payload) => sshsigSign(payload, key);
    this.fingerprint = sshFingerprint(ed25519Blob(createPublicKey(key)));
  }

  /** Follows the Config in force (undefined: none, so audit.sign is off). */
  follow(config: Config | undefined): void {
    const next = config?.audit?.sign === true;
    if (next !== this.on)
      this.log('info', next ? 'audit commits are signed' : 'audit commits are not signed (audit.sign is off)', {
        signingKey: this.fingerprint,
      });
    this.on = next;
  }

  /** The signer while audit.sign is on, for the clones (asked before each commit). */
  readonly signer = (): CommitSigner | undefined => (this.on ? this.sign : undefined);
}
