"""The root's constants and setting defaults: the one place each number is written.

The settings (rootproc/settings.py) take their defaults from here; the rest
are fixed behaviour that a setting would only make harder to reason about.
"""
MIB = 1 << 20

# -- setting defaults (rootproc/settings.py) --------------------------------------------
ROOT_BIND = ("tcp://127.0.0.1:5550",)
CACHE_SIZE = 100_000
CACHE_TTL_S = 60.0
CACHE_STALE_IF_ERROR_S = 300.0
REDIS_TIMEOUT_MS = 100.0
REDIS_CONNECT_TIMEOUT_MS = 50.0
REDIS_RETRIES = 1
REDIS_BACKOFF_MS = 100.0
REDIS_BACKOFF_MAX_MS = 2000.0
REDIS_POOL_SIZE = 2
REDIS_MAX_VALUE_BYTES = 1 << 20   # a record larger than this is refused unread
REDIS_PASSWORD_ENV = "TRIMMER_REDIS_PASSWORD"
DEADLINE_MS = 250
MAX_DEADLINE_MS = 10_000
MAX_CANDIDATES = 2048
MAX_REQUEST_NBYTES = 1 * MIB
METRICS_PORT = 9470   # not 9100: node_exporter's, on most nodes already
METRICS_ADDR = "127.0.0.1"
PING_INTERVAL_MS = 500
HEALTH_TIMEOUT_MS = 2000
SHM_SLOT_BYTES = 1 * MIB
SHM_SLOTS = 1024
# Buffers of 32 MiB and more kept for reuse (_trim/memory.py): a few requests' worth at the
# grid's largest points, held only once requests that large come.
BUFFER_POOL_BYTES = 1024 * MIB
SHM_WAIT_MS = 1.0
# Root memory one request may hold (rootproc/memory.py): the scale grid's
# points this machine can run estimate at most ~3 GB a request (12K features
# x 2,048 candidates x 16 models trimmed: 4.5 GB; every feature: 10.2 GB).
MAX_REQUEST_MEMORY_NBYTES = 8 << 30
# ``max_memory_nbytes`` unset: this share of the node's physical memory.
MEMORY_SHARE = 0.5

# -- fixed behaviour ------------------------------------------------------------------
# A client frame up to this many times the largest valid one is read and
# answered `too_large`; past it, the connection is dropped instead.
FRAME_HARD_CAP_FACTOR = 16
# How long replies may take to leave after a drain before the socket closes.
DRAIN_LINGER_MS = 2000
# A drain lasts at least this long after SIGTERM, answering `shutting_down`,
# so that clients still sending hear it before the socket closes. Refused
# requests do not extend it.
DRAIN_QUIET_S = 0.2
# Queue bounds of the client socket and of each leaf link.
CLIENT_HWM = 100_000
LEAF_HWM = 100_000
# Longest the serving loop sleeps in one poll: it also runs the ping tick,
# deadlines and config installs.
MAX_POLL_MS = 100
# The serving loop sends requests' models (rootproc/scoring.py `send_some`)
# for at most this long, plus the one model it is encoding, between two polls
# of its sockets.
SEND_SLICE_S = 0.002
# With ``threads`` 1 the loop builds small requests' batches itself, up to
# this many estimated bytes of records and batch (~5 ms of CPU here) between
# two rounds of sending; the rest go to the worker.
INLINE_BUILD_NBYTES = 32 * MIB
# Messages read from one socket before the loop turns to the others.
DRAIN_BATCH = 256
# Leaf links reconnect this soon after a connection drops, backing off to the max.
LEAF_RECONNECT_IVL_MS = 100
LEAF_RECONNECT_IVL_MAX_MS = 1000
# At most this many missing ids are named in a `missing: fail` error.
MISSING_IDS_SHOWN = 20
# Model versions one request may score: each has a result in the reply, whose
# header must stay within the protocol's 64 KiB.
MAX_MODELS_PER_REQUEST = 64
# What an error object in a reply carries at most: list entries (the rest
# counted in `<field>_omitted`), characters of its message and of a string detail.
ERROR_LIST_ENTRIES = 20
ERROR_MESSAGE_CHARS = 2000
ERROR_DETAIL_CHARS = 256
# Stage latencies span ~10 us (a cached fetch) to seconds (a deadline).
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
                   2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
