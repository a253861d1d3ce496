"""Drives the PUBLISHED client (nomyo==0.2.9) against a server; run with that
client's interpreter, never ours:  python interop_driver.py BASE_URL API_KEY MARKER

Prints one JSON object: the outcome of a round trip, a round trip with
security_tier="high", and a call with a wrong API key (exception class names
instead of tracebacks).  TLS trust comes from SSL_CERT_FILE, set by the caller:
the published client has no other way to trust a private CA.
"""

import asyncio
import json
import sys


def outcome(coro_factory):
    try:
        result = asyncio.run(coro_factory())
    except Exception as exc:  # report, do not crash: the caller asserts
        return {"exception": type(exc).__name__, "status": getattr(exc, "status_code", None)}
    return {"response": result}


def main():
    base_url, api_key, marker = sys.argv[1:4]
    from nomyo import SecureChatCompletion

    def call(key, **extra):
        async def run():
            client = SecureChatCompletion(base_url=base_url, api_key=key, max_retries=0)
            messages = [{"role": "user", "content": marker}]
            return await client.create(model="echo-test", messages=messages, **extra)

        return run

    report = {
        "roundtrip": outcome(call(api_key, temperature=0.3)),
        "tier": outcome(call(api_key, security_tier="high")),
        "wrong_key": outcome(call("wrong-" + api_key)),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
