/**
 * How the migration stream is protected on the wire, as QEMU's `tls-creds` objects:
 *
 *   psk    TLS 1.2 with a pre-shared key (QEMU's tls-creds-psk): the PSK is derived from the
 *          migration key, so both ends need nothing more. Node 20's TLS 1.3 cannot negotiate a
 *          PSK without a certificate (the handshake fails choosing a signature algorithm), so
 *          this is TLS 1.2's ECDHE-PSK (forward secrecy) or PSK AES-GCM.
 *   x509   TLS 1.3 with certificates (QEMU's tls-creds-x509), read from a directory with QEMU's
 *          file names: ca-cert.pem, server-cert.pem + server-key.pem (destination),
 *          client-cert.pem + client-key.pem (source, optional: mutual authentication).
 *   none   plaintext: only the key's challenge-response and a keyed end digest protect it. A
 *          party on the path can read the guest's memory, and can damage the stream (it is
 *          refused, but the migration fails). Insecure; only on request.
 *
 * The key's challenge-response (auth.ts) runs in every mode, inside TLS when there is TLS: it
 * is who may migrate into this process, as QEMU's tls-authz.
 */
import { createHmac } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { ConnectionOptions, TlsOptions } from "node:tls";
import { MigrationError } from "./stream.js";

export type MigrationSecurity =
  | { tls: "psk" }
  | {
      tls: "x509";
      /** The directory with ca-cert.pem and this side's certificate and key. */
      credsDir: string;
      /** Destination: refuse a source without a client certificate (default false). */
      verifyPeer?: boolean;
    }
  | { tls: "none" };

export const DEFAULT_SECURITY: MigrationSecurity = { tls: "psk" };

const PSK_IDENTITY = "kvmmu-migration";
const PSK_CIPHERS = "ECDHE-PSK-CHACHA20-POLY1305:PSK-AES256-GCM-SHA384";

/** The security option as given by a library caller, checked (EINVAL naming it). */
export function checkSecurity(s: unknown): MigrationSecurity {
  if (s === undefined) return DEFAULT_SECURITY;
  const o: Record<string, unknown> = typeof s === "object" && s !== null ? { ...s } : {};
  const t = o["tls"];
  if (t === "psk" || t === "none") return { tls: t };
  if (t === "x509") {
    const dir = o["credsDir"];
    if (typeof dir !== "string" || dir === "")
      throw new MigrationError("EINVAL", "security.credsDir: the x509 credentials directory is missing");
    return { tls: "x509", credsDir: dir, verifyPeer: o["verifyPeer"] === true };
  }
  throw new MigrationError("EINVAL", `security.tls: must be "psk", "x509" or "none", got ${String(t)}`);
}

/** The TLS PSK: derived from the migration key, so the key itself never keys two things. */
function pskOf(key: string): Buffer {
  return createHmac("sha256", key).update("kvmmu tls-psk").digest();
}

function cred(dir: string, name: string, required: boolean): Buffer | undefined {
  const p = join(dir, name);
  if (existsSync(p)) return readFileSync(p);
  if (required) throw new MigrationError("EINVAL", `tls-creds: ${p} is missing`);
  return undefined;
}

/** The destination's TLS options, or null for plaintext. */
export function serverTls(sec: MigrationSecurity, key: string): TlsOptions | null {
  if (sec.tls === "none") return null;
  if (sec.tls === "psk") {
    const psk = pskOf(key);
    return {
      pskCallback: () => psk,
      pskIdentityHint: PSK_IDENTITY,
      ciphers: PSK_CIPHERS,
      minVersion: "TLSv1.2",
      maxVersion: "TLSv1.2",
    };
  }
  const d = sec.credsDir;
  return {
    ca: cred(d, "ca-cert.pem", true),
    cert: cred(d, "server-cert.pem", true),
    key: cred(d, "server-key.pem", true),
    requestCert: true,
    rejectUnauthorized: sec.verifyPeer === true,
    minVersion: "TLSv1.3",
  };
}

/** The source's TLS options, or null for plaintext. */
export function clientTls(sec: MigrationSecurity, key: string): ConnectionOptions | null {
  if (sec.tls === "none") return null;
  if (sec.tls === "psk") {
    const psk = pskOf(key);
    return {
      pskCallback: () => ({ psk, identity: PSK_IDENTITY }),
      ciphers: PSK_CIPHERS,
      minVersion: "TLSv1.2",
      maxVersion: "TLSv1.2",
      // No certificate in PSK mode: the PSK is what authenticates the server.
      checkServerIdentity: () => undefined,
    };
  }
  const d = sec.credsDir;
  const cert = cred(d, "client-cert.pem", false);
  return {
    ca: cred(d, "ca-cert.pem", true),
    ...(cert ? { cert, key: cred(d, "client-key.pem", true) } : {}),
    minVersion: "TLSv1.3",
  };
}

/** The name of a mode in messages. */
export function securityName(sec: MigrationSecurity): string {
  return sec.tls === "none" ? "insecure plaintext" : sec.tls === "psk" ? "TLS-PSK" : "TLS x509";
}
