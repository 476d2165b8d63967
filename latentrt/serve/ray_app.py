"""The same app on Ray Serve: N replicas, each a process holding its own Pipeline, behind Ray's HTTP proxy.

`latentrt serve --ray --replicas N` starts a local Ray instance (or joins the cluster in $RAY_ADDRESS) and deploys
`deployment(options, N)`. Each replica loads and compiles its model before Ray routes to it (the app builder runs in
the replica's constructor, and the compilation in the app's startup, which Ray runs before the replica is ready), and
splits the machine's cores with the others unless --threads says otherwise. Every answer carries
the replica in `X-Latentrt-Replica`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading

from .app import ServeOptions, create_app, load_pipeline


def deployment(options: ServeOptions, replicas: int):
    """A Ray Serve application of the app (serve.run it, or `serve run` a module that builds it)."""
    from ray import serve

    if options.threads is None:  # replicas on one machine share its cores instead of each taking all of them
        options = dataclasses.replace(options, threads=max(1, (os.cpu_count() or 1) // replicas))

    def build_app():  # runs in each replica's constructor: Ray routes to it once its model is loaded
        return create_app(options, pipe=load_pipeline(options), ready_at_startup=True)

    ingress = serve.ingress(build_app)()
    return serve.deployment(ingress, name="latentrt", num_replicas=replicas,
                            max_ongoing_requests=options.max_queue + 1,
                            ray_actor_options={"num_cpus": 0}).bind()


def run_ray(options: ServeOptions, host: str, port: int, replicas: int) -> None:
    """Deploy on Ray and serve until SIGINT/SIGTERM, then shut Ray Serve down."""
    import ray
    from ray import serve

    if replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {replicas}")
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(options, replicas), name="latentrt", route_prefix="/")
        print(f"latentrt on Ray Serve: {replicas} replicas at http://{host}:{port}", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
