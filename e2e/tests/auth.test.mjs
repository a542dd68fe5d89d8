// Section 2 of the contract: tokens, algorithms, roles, token sources, connect_error texts.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, sign } from "node:crypto";
import { writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startGateway, token, connect, SECRET, TRANSPORTS } from "../helpers.mjs";

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const now = () => Math.floor(Date.now() / 1000);

function signAsym(alg, privateKey, claims) {
  const unsigned = `${b64({ alg, typ: "JWT" })}.${b64({ exp: now() + 600, ...claims })}`;
  const sig = sign("sha256", Buffer.from(unsigned), alg.startsWith("ES") ? { key: privateKey, dsaEncoding: "ieee-p1363" } : privateKey);
  return `${unsigned}.${sig.toString("base64url")}`;
}

describe("HS256 handshakes", () => {
  let gw;
  before(async () => (gw = await startGateway()));
  after(async () => gw?.stop());

  const refused = async (auth, pattern, opts) => {
    await assert.rejects(connect(gw.url, auth, opts), (e) => {
      assert.match(e.message, pattern);
      return true;
    });
  };

  test("bad tokens get connect_error 'unauthorized…'", async () => {
    await refused({}, /^unauthorized/);
    await refused({ token: "garbage" }, /^unauthorized/);
    await refused({ token: token({ sub: "u" }, { secret: "another-secret-entirely" }) }, /^unauthorized: bad signature/);
    await refused({ token: token({ sub: "u", exp: now() - 3600 }) }, /^unauthorized: token expired/);
    await refused({ token: token({ sub: "u", exp: undefined }) }, /^unauthorized/);
    await refused({ token: token({ sub: undefined }) }, /^unauthorized/);
    await refused({ token: token({ sub: "" }) }, /^unauthorized/);
    await refused({ token: token({ sub: "x".repeat(129) }) }, /^unauthorized/);
    await refused({ token: token({ sub: "u", gender: "robot" }) }, /^unauthorized: gender/);
    await refused({ token: token({ sub: "u", roles: "user" }) }, /^unauthorized/);
    // alg: none, with and without a signature.
    const none = `${b64({ alg: "none", typ: "JWT" })}.${b64({ sub: "u", exp: now() + 600 })}.`;
    await refused({ token: none }, /^unauthorized/);
    await refused({ token: token({ sub: "u" }, { header: { alg: "HS512", typ: "JWT" } }) }, /^unauthorized/);
  });

  test("roles: only an absent claim defaults to user; without user, forbidden", async () => {
    (await connect(gw.url, { token: token({ sub: "r1" }) })).disconnect();
    (await connect(gw.url, { token: token({ sub: "r2", roles: ["user", "astronaut"] }) })).disconnect();
    await refused({ token: token({ sub: "r3", roles: ["dashboard"] }) }, /^forbidden/);
    await refused({ token: token({ sub: "r4", roles: [] }) }, /^forbidden/);
    await refused({ token: token({ sub: "r5", roles: ["astronaut"] }) }, /^forbidden/);
  });

  for (const transports of TRANSPORTS) {
    test(`token sources over ${transports[0]}: auth.token, Authorization header, token query`, async () => {
      const t = token({ sub: "src", gender: "female" });
      (await connect(gw.url, { token: t }, { transports })).disconnect();
      (await connect(gw.url, {}, { transports, extraHeaders: { authorization: `Bearer ${t}` } })).disconnect();
      (await connect(gw.url, {}, { transports, query: { token: t } })).disconnect();
    });
  }

  test("/dashboard refuses a token in the URL (proxies log URLs), and takes it in auth or a header", async () => {
    const t = token({ sub: "dash-url", roles: ["dashboard"] });
    const url = `${gw.url}/dashboard`;
    await assert.rejects(connect(url, {}, { query: { token: t } }), (e) => /^unauthorized: .*never in the URL/.test(e.message));
    (await connect(url, { token: t })).disconnect();
    (await connect(url, {}, { extraHeaders: { authorization: `Bearer ${t}` }, transports: ["polling"] })).disconnect();
  });

  test("HTTP: missing, bad and under-privileged bearers", async () => {
    const none = await gw.http("/api/presence/u1");
    assert.equal(none.status, 401);
    assert.equal(none.json.error.code, "unauthorized");
    const bad = await gw.http("/api/presence/u1", { token: "nope" });
    assert.equal(bad.status, 401);
    const dash = await gw.http("/api/presence/u1", { token: token({ sub: "d", roles: ["dashboard"] }) });
    assert.equal(dash.status, 403);
    assert.equal(dash.json.error.code, "forbidden");
    const userOnAdmin = await gw.http("/api/debug/presence", { token: token({ sub: "u" }) });
    assert.equal(userOnAdmin.status, 403);
  });
});

describe("RS256 and ES256 public keys", () => {
  const dir = mkdtempSync(path.join(tmpdir(), "pg-keys-"));
  for (const [alg, kind, opts] of [["RS256", "rsa", { modulusLength: 2048 }], ["ES256", "ec", { namedCurve: "P-256" }]]) {
    test(`${alg}: accepted when signed by the key; HS256 with the public key as secret refused`, async () => {
      const { publicKey, privateKey } = generateKeyPairSync(kind, opts);
      const pem = publicKey.export({ type: "spki", format: "pem" });
      const file = path.join(dir, `${alg}.pem`);
      writeFileSync(file, pem);
      const gw = await startGateway({ JWT_SECRET: "", JWT_PUBLIC_KEY_FILE: file, JWT_ISSUER: "issuer-a", JWT_AUDIENCE: "aud-a" });
      try {
        const good = signAsym(alg, privateKey, { sub: "k1", iss: "issuer-a", aud: "aud-a" });
        (await connect(gw.url, { token: good })).disconnect();
        const wrongIss = signAsym(alg, privateKey, { sub: "k1", iss: "issuer-b", aud: "aud-a" });
        await assert.rejects(connect(gw.url, { token: wrongIss }), /unauthorized: wrong issuer/);
        const wrongAud = signAsym(alg, privateKey, { sub: "k1", iss: "issuer-a", aud: "aud-b" });
        await assert.rejects(connect(gw.url, { token: wrongAud }), /unauthorized: wrong audience/);
        // The classic algorithm-confusion attack: HS256 keyed with the public key's PEM.
        const confused = token({ sub: "k1", iss: "issuer-a", aud: "aud-a" }, { secret: pem });
        await assert.rejects(connect(gw.url, { token: confused }), /unauthorized/);
        const hs = token({ sub: "k1", iss: "issuer-a", aud: "aud-a" }, { secret: SECRET });
        await assert.rejects(connect(gw.url, { token: hs }), /unauthorized/);
      } finally {
        await gw.stop();
      }
    });
  }
});

test("with JWT_ISSUER and JWT_AUDIENCE set, a token without iss or aud is refused; nbf in the future is refused", async () => {
  const gw = await startGateway({ JWT_ISSUER: "issuer-a", JWT_AUDIENCE: "aud-a" });
  try {
    (await connect(gw.url, { token: token({ sub: "ia", iss: "issuer-a", aud: "aud-a" }) })).disconnect();
    for (const claims of [{ aud: "aud-a" }, { iss: "issuer-a" }, {}]) {
      await assert.rejects(connect(gw.url, { token: token({ sub: "ia", ...claims }) }), /^Error: unauthorized/, JSON.stringify(claims));
      const r = await gw.http("/api/presence/ia", { token: token({ sub: "ia", ...claims }) });
      assert.equal(r.status, 401, `HTTP ${JSON.stringify(claims)}`);
    }
    const early = token({ sub: "ia", iss: "issuer-a", aud: "aud-a", nbf: now() + 600 });
    await assert.rejects(connect(gw.url, { token: early }), /^Error: unauthorized: token not valid yet/);
  } finally {
    await gw.stop();
  }
});
