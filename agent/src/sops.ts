/** The SOPS reader lives in src/sops/: the daemon (sops: secrets) and the agent (admin passwords) share it. */

export type {
  OpenSopsOptions,
  SopsDocument,
  SopsEntry,
  SopsErrorCode,
  SopsFormat,
  SopsOutline,
  SopsTree,
  SopsValue,
  SopsValueState,
} from 'rotor/internal';
export {
  goFormatFloat,
  MAX_SOPS_FILE_BYTES,
  openSops,
  openSopsFile,
  REGEX_LIMITS,
  SopsError,
  sopsCleartextMessage,
  sopsFormatOf,
  sopsOutline,
  sopsValueState,
} from 'rotor/internal';
