"""Multi-node: ``configs/gpu.yaml`` adapted to CPU on a simulated cluster (a head without GPUs, two
workers that declare one GPU each) with the PostgreSQL job store.

- concurrent jobs run on both workers (node ids reported by the replicas and their actors);
- a burst scales the pipeline deployment up, and idle scales it back down;
- a worker removed mid-job: its jobs finish on the other worker.
"""

from __future__ import annotations

import pytest
from ray import serve

from serve_app.app import build_app
from tests.service.harness import (ADMIN_KEY, BOX, Client, admin_auth, make_media, pipeline_handle,
                                   slow_generator, wait_until)
from tests.service.multinode import SimulatedCluster, gpu_config_on_cpu, owner_node, running_replicas


@pytest.fixture(scope="module")
def env(tmp_path_factory, pg_server):
    url = pg_server.create_database()
    sim = SimulatedCluster(workers=2)
    root = tmp_path_factory.mktemp("multinode")
    (root / "faults").mkdir()
    args = gpu_config_on_cpu(root / "storage", url,
                             pipeline={"max_ongoing_requests": 2, "autoscaling": {"min_replicas": 2}},
                             auth=admin_auth(root / "storage"), chaos_dir=str(root / "faults"))
    serve.run(build_app(args), name="lipserve", route_prefix="/")
    client = Client(f"http://127.0.0.1:{sim.port}", key=ADMIN_KEY)
    client.wait_http("/readyz", 200, timeout=120)
    media = root / "media"
    yield {"sim": sim, "client": client, "media": media, "args": args, "faults": root / "faults"}
    sim.shutdown()
    pg_server.drop_database(url)


def submit(client: Client, audio, video) -> str:
    r = client.submit_files(audio, video, box=BOX)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def worker_ids(sim: SimulatedCluster) -> dict[str, str]:
    """owner-node prefix -> full node id of each live worker."""
    return {n.node_id[:12]: n.node_id for n in sim.workers}


def test_replicas_and_their_generators_run_on_the_gpu_workers(env):
    sim = env["sim"]
    wait_until(lambda: running_replicas() == 2, "two pipeline replicas", timeout=120)
    handle = pipeline_handle()
    seen = wait_until(lambda: _replica_nodes(handle, want=2), "both replicas answered", timeout=60)
    workers = {n.node_id for n in sim.workers}
    for info in seen.values():
        assert info["node_id"] in workers  # never the head: it has no GPU (and no CPUs for work)
        assert info["generator_node_id"] == info["node_id"]  # the GPU actor sits with its replica


def _replica_nodes(handle, want: int) -> dict | None:
    seen = {}
    for _ in range(20):  # requests are spread over the replicas; ask until each answered
        info = handle.actor_pids.remote().result(timeout_s=60)
        seen[info["replica_actor"]] = info
    return seen if len(seen) >= want else None


def test_concurrent_jobs_spread_over_both_workers(env):
    client, sim = env["client"], env["sim"]
    audio, video = make_media(env["media"], 6.0, seed=1)
    jobs = [submit(client, audio, video) for _ in range(4)]  # 2 replicas x max_ongoing_requests 2
    recs = [client.wait(j, timeout=180) for j in jobs]
    assert all(r["status"] == "succeeded" and len(r["attempts"]) == 1 for r in recs), recs
    nodes = {owner_node(r["attempts"][0]["owner"]) for r in recs}
    assert nodes == set(worker_ids(sim)), (nodes, worker_ids(sim))


def test_burst_scales_the_pipeline_up_and_idle_scales_it_down(env):
    client = env["client"]
    audio, video = make_media(env["media"], 20.0, seed=2)
    jobs = [submit(client, audio, video) for _ in range(8)]  # twice what the two replicas take at once
    wait_until(lambda: running_replicas() > 2, "the autoscaler added pipeline replicas", timeout=120)
    peak = running_replicas()
    recs = [client.wait(j, timeout=300) for j in jobs]
    assert all(r["status"] == "succeeded" for r in recs), [r["status"] for r in recs]
    assert all(len(r["attempts"]) == 1 for r in recs)  # a downscale drains, it does not kill jobs
    wait_until(lambda: running_replicas() == 2, f"idle: back down from {peak} to min_replicas", timeout=120)


def test_worker_removed_mid_job_its_jobs_finish_on_the_other(env):
    client, sim = env["client"], env["sim"]
    audio, video = make_media(env["media"], 12.0, seed=3)
    # Each generate call takes 0.2 s longer while this marker stands: both jobs are still running
    # when the worker goes (unslowed, a 12 s job ends about a second after it is seen running).
    slow = slow_generator(env["faults"], 0.2)
    jobs = [submit(client, audio, video) for _ in range(2)]
    running = [client.wait(j, predicate=lambda r: r["status"] == "running" and r["progress"] >= 0.1, timeout=120)
               for j in jobs]
    doomed_prefix = owner_node(running[0]["attempts"][-1]["owner"])
    doomed = next(n for n in sim.workers if n.node_id.startswith(doomed_prefix))
    on_doomed = [r["id"] for r in running if owner_node(r["attempts"][-1]["owner"]) == doomed_prefix]
    sim.remove_worker(doomed)
    slow.unlink()
    (survivor,) = sim.workers
    for job_id in jobs:
        rec = client.wait(job_id, timeout=240)
        assert rec["status"] == "succeeded", rec
        assert owner_node(rec["attempts"][-1]["owner"]) == survivor.node_id[:12]
        if job_id in on_doomed:  # taken over once the lost node's lease lapsed
            assert rec["attempts"][0]["error"]["code"] == "worker_lost", rec["attempts"]
