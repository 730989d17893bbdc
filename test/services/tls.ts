/**
 * Certificates for the TLS tests, made with the `openssl` command line in a temporary directory (no
 * network): a CA and a server certificate it signed for 127.0.0.1 and localhost; a second, unrelated
 * CA and its own server certificate for the same names; a certificate the first CA signed for another
 * name only; and a self-signed server certificate. EC P-256 keys, valid for two days.
 *
 * Each certificate's pin is computed here with openssl too, by the pipeline the documentation gives,
 * so that the tests compare rotor's spkiPin with it rather than with itself.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';

export interface TlsFile {
  /** The certificate (PEM file). */
  readonly cert: string;
  /** Its private key (PEM file, unencrypted). */
  readonly key: string;
  /** "sha256/" and the base64 SHA-256 of the certificate's SubjectPublicKeyInfo, as openssl computes it. */
  readonly pin: string;
}

export interface TlsFixtures {
  readonly dir: string;
  /** The CA that signed `server` and `otherName`. */
  readonly ca: TlsFile;
  /** For IP:127.0.0.1 and DNS:localhost, signed by `ca`. */
  readonly server: TlsFile;
  /** A CA unrelated to `ca`. */
  readonly otherCa: TlsFile;
  /** For IP:127.0.0.1 and DNS:localhost, signed by `otherCa`. */
  readonly otherServer: TlsFile;
  /** Signed by `ca`, for DNS:elsewhere.invalid only. */
  readonly otherName: TlsFile;
  /** Self-signed, for IP:127.0.0.1 and DNS:localhost. */
  readonly selfSigned: TlsFile;
  /** PEM text of a file. */
  read(file: string): string;
}

function openssl(args: string[], input?: Buffer): Buffer {
  try {
    return execFileSync('openssl', args, {
      input,
      stdio: ['pipe', 'pipe', 'pipe'],
      // The machine's openssl.cnf may ask for things a test does not want (a default CA section, engines).
      env: { ...process.env, OPENSSL_CONF: '/dev/null' },
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === 'ENOENT') throw new Error('the TLS tests need the openssl command line (apt-get install openssl)');
    throw new Error(`openssl ${args.join(' ')} failed: ${err.stderr?.toString() ?? err.message}`);
  }
}

/** The pin of a certificate file, as the documentation says to compute it. */
export function opensslPin(certFile: string): string {
  const pubkey = openssl(['x509', '-in', certFile, '-noout', '-pubkey']);
  const der = openssl(['pkey', '-pubin', '-outform', 'der'], pubkey);
  const digest = openssl(['dgst', '-sha256', '-binary'], der);
  return `sha256/${digest.toString('base64')}`;
}

const KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
const SERVER_NAMES = 'IP:127.0.0.1,DNS:localhost';

/** Makes the certificates in a temporary directory removed when `t` ends. */
export function makeTls(t: Test): TlsFixtures {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rotor-tls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string) => path.join(dir, name);
  const done = (name: string): TlsFile => ({
    cert: file(`${name}.crt`),
    key: file(`${name}.key`),
    pin: opensslPin(file(`${name}.crt`)),
  });
  const ca = (name: string): TlsFile => {
    openssl([
      'req',
      '-x509',
      ...KEY,
      '-keyout',
      file(`${name}.key`),
      '-out',
      file(`${name}.crt`),
      '-days',
      '2',
      '-subj',
      `/CN=rotor test ${name}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    return done(name);
  };
  const signed = (name: string, by: TlsFile, names: string): TlsFile => {
    openssl([
      'req',
      '-new',
      ...KEY,
      '-keyout',
      file(`${name}.key`),
      '-out',
      file(`${name}.csr`),
      '-subj',
      `/CN=${name}`,
    ]);
    const ext = file(`${name}.ext`);
    writeFileSync(
      ext,
      `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=${names}\n`,
    );
    openssl([
      'x509',
      '-req',
      '-in',
      file(`${name}.csr`),
      '-CA',
      by.cert,
      '-CAkey',
      by.key,
      '-set_serial',
      `0x${Date.now().toString(16)}${name.length}`,
      '-days',
      '2',
      '-extfile',
      ext,
      '-out',
      file(`${name}.crt`),
    ]);
    return done(name);
  };
  const rootCa = ca('ca');
  const otherCa = ca('other-ca');
  openssl([
    'req',
    '-x509',
    ...KEY,
    '-keyout',
    file('self-signed.key'),
    '-out',
    file('self-signed.crt'),
    '-days',
    '2',
    '-subj',
    '/CN=localhost',
    '-addext',
    `subjectAltName=${SERVER_NAMES}`,
  ]);
  return {
    dir,
    ca: rootCa,
    server: signed('server', rootCa, SERVER_NAMES),
    otherCa,
    otherServer: signed('other-server', otherCa, SERVER_NAMES),
    otherName: signed('other-name', rootCa, 'DNS:elsewhere.invalid'),
    selfSigned: done('self-signed'),
    read: (f) => readFileSync(f, 'utf8'),
  };
}
