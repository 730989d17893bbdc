/** The SOPS reader lives in src/sops.ts: the daemon (sops: secrets) and the agent (admin passwords) share it. */
export * from '../../src/sops.js';
