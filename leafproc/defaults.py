"""The leaf's constants and setting defaults: the one place each number is written.

The settings (leafproc/settings.py) take their defaults from here; the rest
are fixed behaviour.
"""
MIB = 1 << 20

# -- setting defaults (leafproc/settings.py) --------------------------------------------
MAX_BATCH_ROWS = 4096
MAX_WAIT_MS = 1.0
MAX_MESSAGE_BYTES = 256 * MIB
MAX_QUEUE = 1024
DRAIN_TIMEOUT_S = 30.0
RETIRE_GRACE_S = 2.0
REPO_MAX_ARTIFACT_BYTES = 16 * 1024 * MIB
REPO_RETRY_MAX_S = 60.0

# -- fixed behaviour ------------------------------------------------------------------
# A version the repository could not deliver is tried again after this, the
# wait doubling on each failure up to the repo_retry_max_s setting.
REPO_RETRY_FIRST_S = 1.0
# Longest the I/O loop sleeps in one poll (it also checks for a stop and for
# rollout work).
POLL_MS = 50
# A drain lasts at least this long after SIGTERM, so that stragglers (requests
# sent before a root heard of the drain, from a pong or a `shutting_down`
# reply) get that reply rather than silence. Refused requests do not extend
# it: a root that never stops sending must not hold the leaf open.
QUIET_S = 0.2
# Messages read from one socket before the loop turns to the other.
DRAIN_BATCH = 1000
# Rows of the synthetic batch a model is warmed up with before it serves.
WARMUP_ROWS = 8
# Longest error text a reply carries (TorchScript errors run to pages).
MAX_ERROR_CHARS = 2000
# How long close waits for each serving model thread (and the follower
# thread) to finish; one still running then keeps the zmq context open.
STOP_JOIN_S = 5.0
# How long a reply from a model thread may wait to leave at close.
REPLY_LINGER_MS = 1000
# How long replies already forwarded to the ROUTER may take to leave at close.
ROUTER_LINGER_MS = 2000
# How often the I/O loop looks again at whether the leaf is ready (/readyz):
# a model thread finishing its warm-up is seen within this.
READINESS_S = 0.2
