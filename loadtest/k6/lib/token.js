// HS256 tokens minted inside k6 with the gateway's JWT_SECRET (pass -e JWT_SECRET=...).
// For an RS256/ES256 deployment, pass pre-issued tokens instead: -e TOKENS_FILE=tokens.json
// (a JSON array of strings) and use tokenFor(i) unchanged.
import crypto from "k6/crypto";
import encoding from "k6/encoding";

const tokens = __ENV.TOKENS_FILE ? JSON.parse(open(__ENV.TOKENS_FILE)) : null;

export function mint(sub, gender, secret = __ENV.JWT_SECRET) {
  const b64 = (o) => encoding.b64encode(JSON.stringify(o), "rawurl");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, gender, exp: now + 3600 })}`;
  return `${unsigned}.${crypto.hmac("sha256", secret, unsigned, "base64rawurl")}`;
}

export function tokenFor(i, sub, gender) {
  return tokens ? tokens[i % tokens.length] : mint(sub, gender);
}
