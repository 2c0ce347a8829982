"""Several worker processes per pod sharing the HTTP port (BRIDGE_HTTP__WORKERS > 1).

`pinecall-bridge run` becomes a small supervisor (parent.py) that starts N workers, each a full
Bridge exactly like a replica: the dedup stage's consumer group, the feed lease and the call-log
source already share work between processes. The workers bind the public port (and the admin
port, BRIDGE_HTTP__ADMIN_PORT) with SO_REUSEPORT, so the kernel spreads connections over them;
each also serves its own probes and metrics on a unix socket (worker.py), from which whichever
worker a scrape or probe reaches answers for the whole pod (pod.py: probes.py and merge.py
decide). With one worker none of this runs.
"""
