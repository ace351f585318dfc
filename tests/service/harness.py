"""A real local Ray cluster + the lipserve app over real HTTP, for the service and chaos tests."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve

from serve_app.app import build_app
from tests.media import speech_like, synthetic_frames, write_audio, write_video

TERMINAL = ("succeeded", "failed", "cancelled")
BOX = [40, 20, 120, 110]  # face box of the synthetic 160x120 template


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(num_cpus: int = 8, system_config: dict | None = None) -> int:
    """One cluster per test module; logical CPUs are oversubscribed on purpose (fractional actors).
    ``system_config``: Ray internals a module needs (e.g. a short metrics report interval)."""
    if ray.is_initialized():  # an earlier module died before its teardown: do not fail every module after it
        serve.shutdown()
        ray.shutdown()
    # address="local": always a fresh cluster of our own, never one another process started.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}, _system_config=system_config)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def stop_cluster() -> None:
    serve.shutdown()
    ray.shutdown()


ADMIN_KEY = "ops-admin-key-0123456789abcdef"  # result paths and attempt owners show to admin keys only


def admin_auth(storage: Path) -> dict:
    """``auth`` settings with one admin tenant (``ops``, key ``ADMIN_KEY``), for tests that read
    the records' server-side details (result paths, owners)."""
    keys = Path(storage).parent / f"{Path(storage).name}-admin-keys.txt"
    keys.parent.mkdir(parents=True, exist_ok=True)
    keys.write_text(f"ops:{ADMIN_KEY}\n")
    return {"keys_file": str(keys), "admin_tenants": ["ops"]}


def small_args(storage: Path, **overrides: Any) -> dict:
    """A CPU config sized for a 2-core CI box."""
    args: dict[str, Any] = {
        "storage_dir": str(storage),
        "generator": {"num_cpus": 0.1},
        "writer": {"pool_size": 2, "num_cpus": 0.1, "segment_frames": 25},
        "jobs": {"lease_s": 4, "heartbeat_s": 0.5, "retry_backoff_s": 0.2},
        "pipeline": {"num_cpus": 0.1, "max_ongoing_requests": 6, "graceful_shutdown_timeout_s": 5,
                     "health_check_period_s": 2},
        "ingress": {"num_cpus": 0.1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(args.get(key), dict):
            args[key] = {**args[key], **value}
        else:
            args[key] = value
    return args


def deploy(args: dict, name: str = "lipserve", prefix: str = "/", blocking: bool = True):
    return serve._run(build_app(args), name=name, route_prefix=prefix, _blocking=blocking)


class Client:
    def __init__(self, base: str, key: str | None = None):
        self.base = base.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.base, timeout=60, headers=headers)

    def submit_files(self, audio: Path, video: Path, **fields) -> httpx.Response:
        with open(audio, "rb") as a, open(video, "rb") as v:
            files = {"audio": (Path(audio).name, a), "video": (Path(video).name, v)}
            data = {k: (" ".join(map(str, x)) if isinstance(x, (list, tuple)) else str(x)) for k, x in fields.items()}
            return self.http.post("/v1/jobs", files=files, data=data)

    def submit_json(self, **body) -> httpx.Response:
        return self.http.post("/v1/jobs", json=body)

    def download_result(self, job_id: str) -> Path:
        """The job's MP4 over HTTP, into a temp file (records carry no server paths)."""
        import tempfile

        r = self.http.get(f"/v1/jobs/{job_id}/result")
        r.raise_for_status()
        fd, name = tempfile.mkstemp(suffix=".mp4", prefix=f"result-{job_id}-")
        with open(fd, "wb") as f:
            f.write(r.content)
        return Path(name)

    def job(self, job_id: str) -> dict:
        r = self.http.get(f"/v1/jobs/{job_id}")
        r.raise_for_status()
        return r.json()

    def wait(self, job_id: str, statuses=TERMINAL, timeout: float = 120.0, predicate=None) -> dict:
        """Poll the job until it reaches one of ``statuses`` (or ``predicate`` holds); bounded."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                rec = self.job(job_id)
            except (httpx.HTTPStatusError, httpx.TransportError) as exc:
                # A lost node or replica answers 5xx / drops the connection until Serve replaces the
                # ingress: a polling client retries, the record is in the store.
                status = getattr(getattr(exc, "response", None), "status_code", 503)
                if status < 500 or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                continue
            if (predicate(rec) if predicate else rec["status"] in statuses):
                return rec
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {rec['status']} ({rec['progress']:.2f}) after {timeout} s")
            time.sleep(0.1)

    def wait_http(self, path: str, status: int, timeout: float = 60.0) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = self.http.get(path, timeout=5)
                if r.status_code == status:
                    return r
            except httpx.HTTPError:
                r = None
            if time.monotonic() > deadline:
                raise AssertionError(f"GET {path} never answered {status} (last: {r.status_code if r else None})")
            time.sleep(0.1)


def make_media(directory: Path, seconds: float, seed: int = 0, template_frames: int = 30) -> tuple[Path, Path]:
    """Speech-like audio of ``seconds`` and a 160x120 synthetic template (use BOX as its face)."""
    directory.mkdir(parents=True, exist_ok=True)
    audio = write_audio(directory / f"speech_{seconds:g}_{seed}.wav", speech_like(seconds, seed=seed))
    video = directory / f"template_{template_frames}.mp4"
    if not video.exists():
        write_video(video, synthetic_frames(template_frames, 160, 120), 25)
    return audio, video


def slow_generator(chaos_dir: Path, seconds: float) -> Path:
    """Stand a ``generator_slow`` marker (``serve_app/chaos.py``): while it exists, every generate
    call takes ``seconds`` longer, so a test's job is still running when its fault lands (the output
    is unchanged). Returns the marker: unlink it to end the slowdown."""
    chaos_dir.mkdir(parents=True, exist_ok=True)
    marker = chaos_dir / "generator_slow"
    marker.write_text(str(seconds))
    return marker


def wait_until(predicate, what: str, timeout: float = 30.0, interval: float = 0.1):
    """Wait for a condition with a deadline; fails with ``what`` if it never holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(interval)


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _descends_from_us(pid: int) -> bool:
    """Whether ``pid`` runs under this test process (our cluster's raylet and its workers do; the
    clusters of other processes on the machine do not)."""
    me = os.getpid()
    for _ in range(64):
        pid = _parent(pid)
        if pid == me:
            return True
        if pid <= 1:
            return False
    return False


def ray_processes(prefix: str) -> list[tuple[int, str]]:
    """(pid, state) of this cluster's live processes whose title starts with ``prefix`` (e.g.
    'ray::GeneratorActor')."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if title.startswith(prefix) and _descends_from_us(int(entry.name)):
            found.append((int(entry.name), state))
    return found


def pipeline_handle(app_name: str = "lipserve"):
    return serve.get_deployment_handle("PipelineServer", app_name=app_name)


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def decode_frames(path) -> list:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
