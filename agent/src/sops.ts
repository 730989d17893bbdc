/** The SOPS reader lives in src/sops/: the daemon (sops: secrets) and the agent (admin passwords) share it. */
export * from '../../src/sops/index.js';
