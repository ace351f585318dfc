"""Wav2Lip over real HTTP on a real Ray cluster: a mouth-window ONNX export (random-init weights
written here) on the default CPU engine (OpenVINO) inside the generator actor. The job's video
equals what ``lipserve render`` (``LocalRenderer``) makes of the same input, and the mouth region is
what changed."""

from __future__ import annotations

import numpy as np
import pytest

from actors.models.wav2lip import save_random_checkpoint
from actors.models.wav2lip_export import export_onnx
from actors.pipeline import LocalRenderer, RenderOptions
from tests.service.harness import (
    BOX, Client, decode_frames, deploy, make_media, pipeline_handle, psnr, small_args, start_cluster, stop_cluster,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("wav2lip_service")
    onnx = export_onnx(save_random_checkpoint(root / "w2l.pth", seed=2), root / "w2l.onnx")
    port = start_cluster()
    args = small_args(root / "storage",
                      generator={"backend": "wav2lip", "checkpoint": str(onnx), "batch_size": 16, "num_cpus": 0.1},
                      writer={"segment_frames": 20})
    deploy(args)
    client = Client(f"http://127.0.0.1:{port}")
    client.wait_http("/readyz", 200, timeout=180)
    audio, video = make_media(root / "media", 3.0, seed=9)
    yield {"client": client, "root": root, "onnx": onnx, "audio": audio, "video": video}
    stop_cluster()


def test_wav2lip_job_equals_the_in_process_render(env):
    client = env["client"]
    info = pipeline_handle().generator_info.remote().result(timeout_s=60)
    w2l = next(i for i in (info if isinstance(info, list) else [info]) if i.get("backend") == "wav2lip")
    assert w2l["engine"] == "openvino" and tuple(w2l["window"]) == (45, 94, 16, 80)
    r = client.submit_files(env["audio"], env["video"], box=BOX)
    assert r.status_code == 202, r.text
    rec = client.wait(r.json()["id"], timeout=180)
    assert rec["status"] == "succeeded", rec
    served = decode_frames(client.download_result(rec["id"]))

    local = env["root"] / "local.mp4"
    LocalRenderer(RenderOptions(backend="wav2lip", checkpoint=str(env["onnx"]), box=BOX, segment_frames=20,
                                cache_dir=str(env["root"] / "cache"))).render(env["audio"], env["video"], local)
    mine = decode_frames(local)
    assert len(served) == len(mine) == 75
    assert min(psnr(a, b) for a, b in zip(served, mine)) > 45  # the same pipeline, encoded twice
    template = decode_frames(env["video"])
    x1, y1, x2, y2 = BOX
    diff = np.abs(served[10].astype(float) - template[10].astype(float)).mean(axis=2)
    mouth = diff[y1 + (y2 - y1) * 3 // 5:y2 - (y2 - y1) // 10, x1 + (x2 - x1) // 3:x2 - (x2 - x1) // 3]
    outside = np.concatenate([diff[:y1].ravel(), diff[:, :x1].ravel(), diff[:, x2:].ravel()])
    assert mouth.mean() > 4 * max(outside.mean(), 0.25)  # the mouth was generated, the rest re-encoded only
