/** The SOPS reader's public types and its error (a stable code, never a value). */
import { RotorError } from '../errors.js';

export type SopsErrorCode =
  /** The file is not a SOPS file of a supported store: no `sops` metadata, or not YAML/JSON at all. */
  | 'SOPS_NOT_SOPS'
  /** None of the file's age recipients is the identity given (or the file has no age recipient). */
  | 'SOPS_NO_MATCHING_KEY'
  /** The file was changed after SOPS wrote it: a value or the MAC does not authenticate, or they disagree. */
  | 'SOPS_MAC_MISMATCH'
  /** The SOPS metadata or an encrypted value is malformed. */
  | 'SOPS_CORRUPT'
  /** A SOPS feature this reader does not implement (Shamir key groups, comment rules, aliases, ...). */
  | 'SOPS_UNSUPPORTED';

/** Every code needs a person (the file, its recipients, its format): never retried as it is. */
export class SopsError extends RotorError {
  declare readonly code: SopsErrorCode;
  constructor(code: SopsErrorCode, message: string) {
    super(code, message);
  }
}

export type SopsFormat = 'yaml' | 'json';
export type SopsValue = string | number | bigint | boolean | null | Uint8Array | SopsValue[] | SopsTree;
export interface SopsTree {
  [key: string]: SopsValue;
}

export interface SopsEntry {
  readonly value: SopsValue;
  /** False for a value SOPS left in clear (unencrypted_suffix and the like) and for a null. */
  readonly encrypted: boolean;
}

export interface SopsDocument {
  readonly format: SopsFormat;
  /** The decrypted document, without its `sops` metadata. */
  readonly data: SopsTree;
  /** Whether the MAC covers only the encrypted values (`mac_only_encrypted`). */
  readonly macOnlyEncrypted: boolean;
  /** The value at a path: an array of keys and list indices, or a dotted string ("db.admin.password", "hosts.0"). */
  get(at: string | readonly (string | number)[]): SopsEntry | undefined;
}

export interface OpenSopsOptions {
  /** The store; by default from the file name: `.json` is JSON, anything else YAML. */
  readonly format?: SopsFormat;
  /** The name used in error messages (default: the file's path). */
  readonly name?: string;
}
