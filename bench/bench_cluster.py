"""Jobs per minute on 1 vs 2 worker nodes of the simulated GPU cluster.

The cluster is ``tests/service/multinode.py``'s: ``ray.cluster_utils.Cluster`` on this machine, a head
without GPUs and worker nodes that declare one GPU each, running ``configs/gpu.yaml`` adapted to CPU
with the PostgreSQL job store (a throw-away server, ``tests/pg_server.py``). Each worker holds two
pipeline replicas (``generator.num_gpus: 0.5``), so 2 workers run twice the replicas of 1.

All simulated nodes share this machine's cores: the figure shows what the scheduling and the shared
job store deliver, and is bounded by the real CPU count (on 2 cores expect little gain from a
second node). Compare runs on the same machine only.

Usage: python bench/bench_cluster.py [--workers 1 2] [--jobs 12] [--seconds 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ray import serve  # noqa: E402

from serve_app.app import build_app  # noqa: E402
from tests.pg_server import PostgresServer  # noqa: E402
from tests.service.harness import ADMIN_KEY, BOX, Client, admin_auth, make_media, wait_until  # noqa: E402
from tests.service.multinode import SimulatedCluster, gpu_config_on_cpu, running_replicas  # noqa: E402

REPLICAS_PER_WORKER = 2  # 1 GPU / generator.num_gpus 0.5


def run_one(pg: PostgresServer, workers: int, jobs: int, seconds: float, work: Path) -> dict:
    url = pg.create_database()
    sim = SimulatedCluster(workers=workers)
    try:
        replicas = REPLICAS_PER_WORKER * workers
        storage = work / f"storage-{workers}"
        args = gpu_config_on_cpu(storage, url, pipeline={
            "autoscaling": {"min_replicas": replicas, "max_replicas": replicas}},
            auth=admin_auth(storage))  # an admin key: the records then show which replica ran each job
        t_deploy = time.perf_counter()
        serve.run(build_app(args), name="lipserve", route_prefix="/")
        client = Client(f"http://127.0.0.1:{sim.port}", key=ADMIN_KEY)
        client.wait_http("/readyz", 200, timeout=300)
        wait_until(lambda: running_replicas() >= replicas, f"{replicas} warm replicas", timeout=300)
        deploy_s = time.perf_counter() - t_deploy
        audio, video = make_media(work / "media", seconds, seed=11)
        warm = client.submit_files(audio, video, box=BOX).json()["id"]  # avatar cache filled once
        client.wait(warm, timeout=300)
        t0 = time.perf_counter()
        ids = []
        for _ in range(jobs):
            r = client.submit_files(audio, video, box=BOX)
            r.raise_for_status()
            ids.append(r.json()["id"])
        recs = [client.wait(i, timeout=600) for i in ids]
        wall = time.perf_counter() - t0
        bad = [r["status"] for r in recs if r["status"] != "succeeded"]
        if bad:
            raise RuntimeError(f"{len(bad)} jobs did not succeed: {bad}")
        owners = {r["attempts"][-1]["owner"] for r in recs}
        return {"workers": workers, "replicas": replicas, "jobs": jobs, "clip_s": seconds, "wall_s": wall,
                "jobs_per_min": jobs / wall * 60.0, "replicas_used": len(owners), "deploy_s": deploy_s}
    finally:
        sim.shutdown()
        pg.drop_database(url)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=6.0, help="audio length of each job")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()

    rows = []
    with PostgresServer() as pg, tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for n in opts.workers:
            rows.append(run_one(pg, n, opts.jobs, opts.seconds, Path(tmp)))
    if opts.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"simulated GPU cluster, PostgreSQL job store: {opts.jobs} jobs of {opts.seconds:g} s audio")
    print(f"{'workers':>7} {'replicas':>8} {'used':>5} {'wall s':>8} {'jobs/min':>9} {'deploy s':>9}")
    for r in rows:
        print(f"{r['workers']:>7} {r['replicas']:>8} {r['replicas_used']:>5} {r['wall_s']:>8.1f} "
              f"{r['jobs_per_min']:>9.1f} {r['deploy_s']:>9.1f}")
    if len(rows) >= 2:
        print(f"speed-up {rows[-1]['workers']} vs {rows[0]['workers']} workers: "
              f"{rows[-1]['jobs_per_min'] / rows[0]['jobs_per_min']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
