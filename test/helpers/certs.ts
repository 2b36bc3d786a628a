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
  /**
   * A key and a certificate for CN=name, valid two days: self-signed (a CA) without `issuer`,
   * else signed by that CA with the extensions `ext` (openssl's extfile lines).
   */
  const issue = (name: string, issuer?: string, ext = ""): void => {
    const key = ["-newkey", "rsa:2048", "-nodes", "-keyout", `${name}-key.pem`, "-subj", `/CN=${name}`];
    const days = ["-days", "2"];
    if (issuer === undefined) return ossl("req", "-x509", ...key, "-out", `${name}-cert.pem`, ...days);
    ossl("req", ...key, "-out", `${name}.csr`);
    writeFileSync(join(d, `${name}.ext`), ext);
    ossl(
      ...["x509", "-req", "-in", `${name}.csr`, "-out", `${name}-cert.pem`, ...days],
      ...["-CA", `${issuer}-cert.pem`, "-CAkey", `${issuer}-key.pem`, "-CAcreateserial"],
      ...["-extfile", `${name}.ext`],
    );
  };
  issue("ca");
  issue("other-ca");
  issue("server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  issue("client", "ca", "extendedKeyUsage=clientAuth\n");
  issue("stranger", "other-ca", "extendedKeyUsage=clientAuth\n");
  /** One side's directory: the CA that both trust, and `leaf`'s pair under QEMU's `as` names. */
  const side = (n: string, leaf: string, as: string): string => {
    const p = join(d, n);
    mkdirSync(p);
    copyFileSync(join(d, "ca-cert.pem"), join(p, "ca-cert.pem"));
    for (const f of ["cert", "key"]) copyFileSync(join(d, `${leaf}-${f}.pem`), join(p, `${as}-${f}.pem`));
    return p;
  };
  return {
    server: side("srv", "server", "server"),
    client: side("cli", "client", "client"),
    stranger: side("str", "stranger", "client"),
  };
}
