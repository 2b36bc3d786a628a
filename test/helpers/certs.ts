/**
 * x509 credentials for the TLS tests, made with the openssl CLI: a CA, a server certificate for
 * 127.0.0.1, a client certificate, and a client certificate another CA signed (QEMU's file names,
 * one directory per side).
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A CA, a server certificate for 127.0.0.1, a client certificate; null when openssl is missing. */
export function makeCerts(): { server: string; client: string; stranger: string } | null {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
  } catch {
    return null;
  }
  const d = mkdtempSync(join(tmpdir(), "kvmmu-tls-"));
  const ossl = (...a: string[]): void => void execFileSync("openssl", a, { cwd: d, stdio: "ignore" });
  const ca = (name: string): void => {
    ossl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      `${name}-key.pem`,
      "-out",
      `${name}-cert.pem`,
      "-days",
      "2",
      "-subj",
      `/CN=${name}`,
    );
  };
  const leaf = (name: string, caName: string, ext: string): void => {
    ossl(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      `${name}-key.pem`,
      "-out",
      `${name}.csr`,
      "-subj",
      `/CN=${name}`,
    );
    writeFileSync(join(d, `${name}.ext`), ext);
    ossl(
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      `${caName}-cert.pem`,
      "-CAkey",
      `${caName}-key.pem`,
      "-CAcreateserial",
      "-out",
      `${name}-cert.pem`,
      "-days",
      "2",
      "-extfile",
      `${name}.ext`,
    );
  };
  ca("ca");
  ca("other-ca");
  leaf("server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  leaf("client", "ca", "extendedKeyUsage=clientAuth\n");
  leaf("stranger", "other-ca", "extendedKeyUsage=clientAuth\n");
  const dir = (n: string, files: [string, string][]): string => {
    const p = join(d, n);
    mkdirSync(p);
    for (const [from, to] of files) copyFileSync(join(d, from), join(p, to));
    return p;
  };
  return {
    server: dir("srv", [
      ["ca-cert.pem", "ca-cert.pem"],
      ["server-cert.pem", "server-cert.pem"],
      ["server-key.pem", "server-key.pem"],
    ]),
    client: dir("cli", [
      ["ca-cert.pem", "ca-cert.pem"],
      ["client-cert.pem", "client-cert.pem"],
      ["client-key.pem", "client-key.pem"],
    ]),
    stranger: dir("str", [
      ["ca-cert.pem", "ca-cert.pem"],
      ["stranger-cert.pem", "client-cert.pem"],
      ["stranger-key.pem", "client-key.pem"],
    ]),
  };
}
