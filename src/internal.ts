/**
 * The code the rotor-agent package shares with rotor: the agent imports `rotor/internal` and nothing
 * else of this package. Not a public API: names come and go with the agent's needs.
 */

export type { Retry } from './errors.js';
export { BACKOFF, codeOf, NEVER, RotorError, retryAfter, retryOf } from './errors.js';
export type { Keys } from './keys.js';
export { KeyError, loadKeys, parseSigningKey } from './keys.js';
export type { Level, LogFormat, Logger } from './log.js';
export { jsonLogger, LEVELS, LOG_FORMATS, logger, writeStderr } from './log.js';
export { errorPath, quoteHint, uniqueProblems, valueAt } from './model/ajv-problems.js';
export { parseDuration } from './model/duration.js';
export { ENGINE_NAMES } from './model/engines.js';
export type { Problem } from './model/problems.js';
export { problemLine, suggest } from './model/problems.js';
export type { ParsedDoc, Path } from './model/yaml.js';
export { decodeUtf8, LIMITS, parseDocuments, positionOf } from './model/yaml.js';
export { readSchema } from './paths.js';
export type {
  Check,
  CheckedCredential,
  Credential,
  EngineName,
  Job,
  JobKind,
  Result,
  RetirePayload,
  SetPayload,
  Strategy,
  VerifyPayload,
} from './protocol/jobs.js';
export {
  AGENT_JOBS_PATH,
  AGENT_RESULTS_PATH,
  JOB_KINDS,
  MAX_AGENT_WAIT,
  MAX_RESULT_MESSAGE,
  MAX_RESULTS_BODY,
  NOT_LEADER,
} from './protocol/jobs.js';
export { openSealed, SealError, sealForAgent } from './protocol/seal.js';
export { H_NONCE, signRequest, verifyResponse } from './protocol/sign.js';
export { spkiPin, TLS_MIN_VERSION } from './protocol/tls.js';
export type {
  HostedConsumer,
  Receipt as ValuesReceipt,
  SecretCopy,
  ValuesAnswer,
  ValuesPayload,
} from './protocol/values.js';
export {
  AGENT_RECEIPTS_PATH,
  AGENT_VALUES_PATH,
  MAX_RECEIPTS_PER_REQUEST,
  MAX_VALUES_ANSWER,
  ValuesOpener,
} from './protocol/values.js';
export type { Health } from './serve/consumer-api.js';
export { consumerHandler } from './serve/consumer-api.js';
export type { ReceiptBook, Served, ValueSource, VersionView } from './serve/consumer-service.js';
export { ConsumerService } from './serve/consumer-service.js';
export type { ConsumerSocketSpec } from './serve/consumer-sockets.js';
export { ConsumerSockets } from './serve/consumer-sockets.js';
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
} from './sops/index.js';
// The SOPS reader, whole: agent/src/sops.ts passes it on to the agent's modules.
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
} from './sops/index.js';
export type { Flags } from './util/args.js';
export { HELP_FLAG, optionsHelp, parse } from './util/args.js';
export { backoffDelay } from './util/backoff.js';
export { boundedBody, declaredOver } from './util/bounded.js';
export { isMain, VERSION } from './version.js';
