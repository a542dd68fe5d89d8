# Verifying a webhook request (README, "Webhooks"); e2e/tests/webhooks.test.mjs runs it
# against real deliveries.
import hashlib
import hmac
import time


# raw_body: the request body exactly as received (verify before parsing it);
# timestamp, signature: the X-Presence-Timestamp and X-Presence-Signature headers.
def verify_webhook(secret: bytes, raw_body: bytes, timestamp: str, signature: str, tolerance: int = 300) -> bool:
    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + raw_body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) <= tolerance
    return fresh and hmac.compare_digest(expected, signature)


if __name__ == "__main__":
    # For the test: secret, timestamp and signature as arguments, the body on stdin.
    import sys

    ok = verify_webhook(sys.argv[1].encode(), sys.stdin.buffer.read(), sys.argv[2], sys.argv[3])
    print("verified" if ok else "refused")
