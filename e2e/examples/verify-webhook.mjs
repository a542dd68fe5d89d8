// Verifying a webhook request (README, "Webhooks"); e2e/tests/webhooks.test.mjs runs it
// against real deliveries.
import crypto from "node:crypto";

// rawBody: the request body exactly as received (verify before JSON.parse);
// timestamp, signature: the X-Presence-Timestamp and X-Presence-Signature headers.
export function verifyWebhook(secret, rawBody, timestamp, signature, toleranceSeconds = 300) {
  const expected = "sha256=" + crypto.createHmac("sha256", secret).update(`${timestamp}.${rawBody}`).digest("hex");
  const fresh = Math.abs(Date.now() / 1000 - Number(timestamp)) <= toleranceSeconds;
  return fresh && expected.length === signature.length &&
    crypto.timingSafeEqual(Buffer.from(expected), Buffer.from(signature));
}
