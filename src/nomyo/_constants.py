"""Every tunable of nomyo in one place: sizes (*_BYTES), limits, defaults, names.

Owns values only; imports nothing from the package.
"""

from __future__ import annotations

#: environment variable choosing the memory backend: "native", "python" or unset (auto)
MEMORY_BACKEND_ENV = "NOMYO_MEMORY_BACKEND"
MEMORY_BACKENDS = ("native", "python")

#: byte that fresh secure memory is filled with, so reads of never-written data show
GARBAGE_BYTE = 0xDB

#: how many dict/list/tuple containers JSON may nest: the codec (C and the
#: fallback) refuses deeper values with RecursionError, and wipe() follows
#: values this deep, so it reaches everything the codec made.  Defined only
#: here: csrc/build.py passes it to the C compiler as NOMYO_MAX_NESTING.
#: Fixed, rather than the interpreter's recursion limit, so that the limit
#: does not depend on the caller's stack or the Python version; low enough
#: for the fallback's recursive wipe under the default recursion limit.
MAX_NESTING = 512

#: what ``nomyo doctor`` counts on: a request locks its serialized prompt and its
#: answer plus about this much more (a few pages), and a budget is enough when a
#: request can keep this much prompt locked
LOCK_REQUEST_OVERHEAD_BYTES = 64 * 1024
LOCK_BUDGET_ENOUGH_BYTES = 16 * 1024 * 1024

# ---- protocol 1.0 (../shared/PROTOCOL.md)
PROTOCOL_VERSION = "1.0"
PACKAGE_ALGORITHM = "hybrid-aes256-rsa4096"
KEY_ALGORITHM = "RSA-OAEP-SHA256"
PAYLOAD_ALGORITHM = "AES-256-GCM"
AES_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SECURITY_TIERS = ("standard", "high", "maximum")

PUBLIC_KEY_PATH = "/pki/public_key"
COMPLETION_PATH = "/v1/chat/secure_completion"

#: largest request plaintext (the published client's cap, the server's 413 line)
MAX_REQUEST_BYTES = 10 * 1024 * 1024

# ---- RSA keys
#: size of keys nomyo generates, and the smallest it accepts
DEFAULT_KEY_BITS = 4096
MIN_KEY_BITS = 2048
PUBLIC_EXPONENT = 65537
#: a key file larger than this is not a key file
MAX_KEY_FILE_BYTES = 1024 * 1024

# ---- the reference endpoint (nomyo serve)
DEFAULT_SERVE_HOST = "127.0.0.1"
DEFAULT_SERVE_PORT = 12434
#: seconds to connect to / wait for an upstream model server
UPSTREAM_CONNECT_TIMEOUT = 10.0
UPSTREAM_READ_TIMEOUT = 600.0
#: seconds a client has to send a whole request body (nomyo serve --body-timeout)
DEFAULT_BODY_TIMEOUT = 30.0
#: requests nomyo serve handles at once (--max-concurrent); beyond, 503 + Retry-After
DEFAULT_MAX_CONCURRENT = 32
#: seconds a 503 for a busy nomyo serve tells the client to wait
BUSY_RETRY_AFTER = 1
#: the largest --api-key-file
MAX_API_KEY_FILE_BYTES = 64 * 1024
#: the largest package body it reads: base64 of the largest plaintext, plus the JSON around it
SERVE_MAX_BODY_BYTES = (MAX_REQUEST_BYTES + 2) // 3 * 4 + 8192
#: the longest X-Payload-ID it accepts
MAX_PAYLOAD_ID_CHARS = 128
#: the most choices (``n``) the echo model answers with
ECHO_MAX_CHOICES = 16

# ---- the local OpenAI endpoint (nomyo proxy)
DEFAULT_PROXY_LISTEN = "127.0.0.1:8080"
#: the largest request body read (the protocol's plaintext cap)
PROXY_MAX_BODY_BYTES = MAX_REQUEST_BYTES
#: the one model listed when none are configured
PROXY_DEFAULT_MODEL = "nomyo"
#: the longest router error message passed on, and path echoed in a 404
PROXY_MAX_MESSAGE_CHARS = 1000
PROXY_MAX_PATH_CHARS = 200

# ---- the command line
#: environment variable naming the model of ``nomyo chat``
MODEL_ENV = "NOMYO_MODEL"
#: how much of an upstream's 4xx message `nomyo serve` passes on
UPSTREAM_REASON_CHARS = 300

# ---- the client
DEFAULT_BASE_URL = "https://api.nomyo.ai"
API_KEY_ENV = "NOMYO_API_KEY"
BASE_URL_ENV = "NOMYO_BASE_URL"
#: seconds for a whole create() call, retries included
DEFAULT_TIMEOUT = 600.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: seconds a fetched router key is trusted before it is fetched again
ROUTER_KEY_TTL = 3600.0
#: how many recent answers' wrapped keys are remembered to spot replays
REPLAY_MEMORY = 16384
#: statuses worth retrying; seconds of backoff (doubling) and caps
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
RETRY_AFTER_CAP = 60.0
#: the most the backoff is cut by at random (a fraction), so clients spread out
RETRY_JITTER = 0.25
#: requests in flight per httpx pool before the async client opens another pool:
#: httpcore checks every connection of a pool for every waiting request
#: (encode/httpcore#1035), so a few small pools cost far less than one big one
POOL_SHARD_REQUESTS = 4
#: each httpx pool's limits: connections, idle connections kept, seconds an idle one is kept
POOL_MAX_CONNECTIONS = 100
POOL_MAX_KEEPALIVE = 20
POOL_KEEPALIVE_EXPIRY = 30.0
#: the most nomyo reads of an error body or of the router's public key
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_PUBLIC_KEY_BYTES = 64 * 1024
#: the encodings an answer may come in (decompressed as it arrives, capped)
ACCEPT_ENCODING = "gzip, deflate"
#: the most one step of decompression makes
INFLATE_PIECE = 64 * 1024
#: file names in key_dir (the published client's)
PRIVATE_KEY_FILE = "private_key.pem"
PUBLIC_KEY_FILE = "public_key.pem"
