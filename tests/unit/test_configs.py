"""Deployment configs: the Serve YAML configs and the KubeRay RayService manifest validate against
Ray's Serve schema and the typed ``LipserveArgs``; the manifest has the intended shape; and
``serve_app.app`` derives the deployment options from the args. No Ray cluster is started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ray
from ray import serve
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from serve_app.app import build_app
from serve_app.ingress import deployment_options as ingress_options
from serve_app.pipeline_server import deployment_options as pipeline_options
from serve_app.config import LipserveArgs

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "configs" / "local.yaml"
GPU = ROOT / "configs" / "gpu.yaml"
DUIX = ROOT / "configs" / "duix.yaml"
GPU_MUSETALK = ROOT / "configs" / "gpu-musetalk.yaml"
RAYSERVICE = ROOT / "k8s" / "rayservice.yaml"
STORAGE = ROOT / "k8s" / "storage.yaml"
POSTGRES = ROOT / "k8s" / "postgres.yaml"


def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _manifest() -> dict:
    return _load(RAYSERVICE)


def _serve_config_v2() -> dict:
    text = _manifest()["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 must be a YAML string"
    return yaml.safe_load(text)


SERVE_CONFIGS = {
    "configs/local.yaml": lambda: _load(LOCAL),
    "configs/gpu.yaml": lambda: _load(GPU),
    "configs/duix.yaml": lambda: _load(DUIX),
    "configs/gpu-musetalk.yaml": lambda: _load(GPU_MUSETALK),
    "k8s/rayservice.yaml:serveConfigV2": _serve_config_v2,
}


def _assert_known_keys(data: dict, model, where: str) -> None:
    # ServeDeploySchema / ServeApplicationSchema accept unknown keys (forward compatibility), so a
    # misspelt key would be silently ignored: check the keys against the schema's fields.
    unknown = set(data) - set(model.model_fields)
    assert not unknown, f"{where}: unknown {model.__name__} keys {sorted(unknown)}"


# ---------------------------------------------------------------------------- (a) schemas

@pytest.mark.parametrize("name", list(SERVE_CONFIGS))
def test_serve_config_validates(name):
    raw = SERVE_CONFIGS[name]()
    _assert_known_keys(raw, ServeDeploySchema, name)
    schema = ServeDeploySchema.model_validate(raw)
    assert [a.name for a in schema.applications] == ["lipserve"]
    for app_raw, app in zip(raw["applications"], schema.applications):
        _assert_known_keys(app_raw, ServeApplicationSchema, f"{name}: application {app.name}")
        assert app.import_path == "serve_app.app:build_app"
        assert app.route_prefix == "/"
        args = LipserveArgs.model_validate(app.args)  # extra="forbid": typos fail here
        assert os.path.isabs(args.storage_dir)


def _duix_args(monkeypatch, root: str | None) -> LipserveArgs:
    if root is None:
        monkeypatch.delenv("LIPSERVE_DUIX_ROOT", raising=False)
    else:
        monkeypatch.setenv("LIPSERVE_DUIX_ROOT", root)
    return LipserveArgs.model_validate(_load(DUIX)["applications"][0]["args"])


def test_duix_config_is_local_on_the_duix_port(monkeypatch):
    duix, local = _load(DUIX), _load(LOCAL)
    assert duix["http_options"]["port"] == 8383
    assert duix["proxy_location"] == local["proxy_location"]
    (d_app,), (l_app,) = duix["applications"], local["applications"]
    for key in ("name", "route_prefix", "import_path"):
        assert d_app[key] == l_app[key], key
    d_args = _duix_args(monkeypatch, None).model_dump()
    l_args = LipserveArgs.model_validate(l_app["args"]).model_dump()
    assert d_args["duix"]["enabled"] is True
    d_args.pop("duix"), l_args.pop("duix")
    assert d_args == l_args, "configs/duix.yaml must run the same pipeline as configs/local.yaml"


def test_duix_data_root_comes_from_the_environment(monkeypatch, tmp_path):
    assert _duix_args(monkeypatch, None).duix.data_dir == "/code/data"  # the original's volume
    assert _duix_args(monkeypatch, str(tmp_path)).duix.data_dir == str(tmp_path)
    assert _duix_args(monkeypatch, "").duix.data_dir == "/code/data"  # empty = unset
    # build_app validates in the process that reads the config: replicas get the resolved path.
    monkeypatch.setenv("LIPSERVE_DUIX_ROOT", str(tmp_path))
    app = build_app(_load(DUIX)["applications"][0]["args"])
    config, _ = app._bound_deployment.init_args
    assert config["duix"]["data_dir"] == str(tmp_path)


def test_env_reference_without_default_must_be_set(monkeypatch):
    monkeypatch.delenv("LIPSERVE_TEST_UNSET", raising=False)
    with pytest.raises(ValueError, match="LIPSERVE_TEST_UNSET is not set"):
        LipserveArgs.model_validate({"duix": {"data_dir": "${LIPSERVE_TEST_UNSET}/x"}})
    monkeypatch.setenv("LIPSERVE_TEST_UNSET", "/srv")
    assert LipserveArgs.model_validate({"duix": {"data_dir": "${LIPSERVE_TEST_UNSET}/x"}}).duix.data_dir == "/srv/x"


def test_args_typo_is_rejected():
    raw = _serve_config_v2()
    args = dict(raw["applications"][0]["args"])
    args["generator"] = {**args["generator"], "num_gpu": 1}
    with pytest.raises(ValueError, match="num_gpu"):
        LipserveArgs.model_validate(args)


def test_rayservice_serves_the_gpu_application():
    gpu = _load(GPU)
    k8s = _serve_config_v2()
    for key in ("proxy_location", "http_options"):
        assert k8s[key] == gpu[key], key
    (g_app,), (k_app,) = gpu["applications"], k8s["applications"]
    for key in ("name", "route_prefix", "import_path"):
        assert k_app[key] == g_app[key], key
    assert LipserveArgs.model_validate(k_app["args"]) == LipserveArgs.model_validate(g_app["args"]), (
        "serveConfigV2 args drifted from configs/gpu.yaml"
    )
    args = LipserveArgs.model_validate(k_app["args"])
    assert args.generator.backend == "wav2lip"
    assert args.generator.device == "cuda"
    assert args.generator.checkpoint.endswith(".onnx")
    assert 0 < args.generator.num_gpus <= 1
    assert args.writer.prefer_nvenc
    assert k8s["http_options"]["port"] == 8000
    # Job state in PostgreSQL; the URL (with its password) comes from the environment, never the config.
    assert args.job_store == "postgres" and args.database_url is None


def test_gpu_musetalk_serves_musetalk_first_in_fp16_and_the_default():
    args = LipserveArgs.model_validate(_load(GPU_MUSETALK)["applications"][0]["args"])
    served = args.served_generators()
    assert list(served) == ["musetalk", "default"] and args.default_backend == "musetalk"
    m = served["musetalk"]
    assert (m.device, m.precision) == ("cuda", "fp16")
    assert m.checkpoint and not m.checkpoint.endswith((".pth", ".onnx"))  # the models directory
    assert 0 < m.num_gpus <= 0.5 and served["default"].num_gpus == 0
    assert args.max_face_gap_s == 1.0


def test_generators_list_is_validated():
    two = {"generators": [{"backend": "default"}, {"backend": "musetalk", "checkpoint": "/m"}]}
    args = LipserveArgs.model_validate(two)
    assert list(args.served_generators()) == ["default", "musetalk"]
    assert args.resolve_backend(None) == "default" and args.resolve_backend("mouth_warp") == "default"
    assert args.resolve_backend("musetalk") == "musetalk"
    assert LipserveArgs.model_validate(args.model_dump()) == args  # what the replicas receive
    with pytest.raises(Exception, match="not served"):
        args.resolve_backend("wav2lip")
    with pytest.raises(ValueError, match="more than once"):
        LipserveArgs.model_validate({"generators": [{"backend": "default"}, {"backend": "mouth_warp"}]})
    with pytest.raises(ValueError, match="either"):
        LipserveArgs.model_validate({**two, "generator": {"backend": "wav2lip", "checkpoint": "/w.onnx"}})
    with pytest.raises(ValueError):
        LipserveArgs.model_validate({"generators": []})
    single = LipserveArgs.model_validate({"generator": {"backend": "musetalk", "checkpoint": "/m"}})
    assert list(single.served_generators()) == ["musetalk"] and single.resolve_backend("") == "musetalk"


# ---------------------------------------------------------------------------- (b) manifest

def _pod_specs(spec: dict):
    cluster = spec["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def _gpu_groups(spec: dict) -> list[dict]:
    groups = spec["rayClusterConfig"]["workerGroupSpecs"]
    return [g for g in groups
            if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                   for c in g["template"]["spec"]["containers"])]


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_rayservice_manifest_shape():
    m = _manifest()
    assert m["apiVersion"] == "ray.io/v1"
    assert m["kind"] == "RayService"
    assert m["metadata"]["name"] == "lipserve"
    cluster = m["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0" == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"

    gpu_groups = _gpu_groups(m["spec"])
    assert gpu_groups, "no worker group with an nvidia.com/gpu limit"
    g = gpu_groups[0]
    assert g["minReplicas"] == 1 and g["maxReplicas"] == 8
    assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    c = g["template"]["spec"]["containers"][0]
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind

    for group, pod in _pod_specs(m["spec"]):
        for container in pod["containers"]:
            assert _env(container).get("RAY_USAGE_STATS_ENABLED") == "0", group
            assert container["image"].endswith(":0.1.0"), group


def test_every_container_gets_the_database_url_from_the_operator_secret():
    spec = _manifest()["spec"]
    cluster = {d["kind"]: d for d in yaml.safe_load_all(POSTGRES.read_text()) if d}["Cluster"]
    for group, pod in _pod_specs(spec):
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            ref = env["LIPSERVE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]  # never a literal value
            # CloudNativePG writes the app user's URL into <cluster>-app, key uri.
            assert ref == {"name": f"{cluster['metadata']['name']}-app", "key": "uri"}, group


def test_head_holds_no_job_state_and_the_gcs_overlay_stays_documented():
    text = RAYSERVICE.read_text()
    assert "# gcsFaultToleranceOptions:" in text and "redisAddress" in text
    assert "gcsFaultToleranceOptions" not in _manifest()["spec"]["rayClusterConfig"]  # an opt-in overlay
    readme = (ROOT / "k8s" / "README.md").read_text()
    assert "(UPGRADES.md)" in readme and "no longer holds job state" in readme
    args = LipserveArgs.model_validate(_serve_config_v2()["applications"][0]["args"])
    assert args.job_store != "actor"  # no store actor pinned to the head


def test_worker_group_fits_the_pipeline():
    spec = _manifest()["spec"]
    args = LipserveArgs.model_validate(_serve_config_v2()["applications"][0]["args"])
    c = _gpu_groups(spec)[0]["template"]["spec"]["containers"][0]
    cpus = float(c["resources"]["limits"]["cpu"])
    per_replica = args.pipeline.num_cpus + args.generator.num_cpus + args.writer.pool_size * args.writer.num_cpus
    replicas_per_gpu = int(1 / args.generator.num_gpus)
    assert cpus >= replicas_per_gpu * per_replica, "a GPU pod cannot hold the pipeline replicas its GPU can"


def test_graceful_shutdown_fits_termination_grace():
    spec = _manifest()["spec"]
    args = LipserveArgs.model_validate(_serve_config_v2()["applications"][0]["args"])
    for group, pod in _pod_specs(spec):
        assert pod["terminationGracePeriodSeconds"] >= args.pipeline.graceful_shutdown_timeout_s, group


def test_volumes_match_the_args():
    spec = _manifest()["spec"]
    args = LipserveArgs.model_validate(_serve_config_v2()["applications"][0]["args"])
    claims = {d["metadata"]["name"]: d for d in yaml.safe_load_all(STORAGE.read_text()) if d}
    assert claims["lipserve-data"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claims["lipserve-models"]["spec"]["accessModes"] == ["ReadOnlyMany"]

    pod = _gpu_groups(spec)[0]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}

    def claim_of(path: str) -> tuple[str, dict]:
        mount_path = max((p for p in mounts if path.startswith(p.rstrip("/") + "/")), key=len)
        mount = mounts[mount_path]
        return volumes[mount["name"]]["persistentVolumeClaim"]["claimName"], mount

    claim, mount = claim_of(args.storage_dir)
    assert claim == "lipserve-data" and not mount.get("readOnly", False)
    claim, mount = claim_of(args.generator.checkpoint)
    assert claim == "lipserve-models" and mount.get("readOnly") is True
    assert set(claims) >= {v["persistentVolumeClaim"]["claimName"]
                           for v in pod["volumes"] if "persistentVolumeClaim" in v}


# ---------------------------------------------------------------------------- (c) builder

def _custom_args() -> LipserveArgs:
    return LipserveArgs.model_validate({
        "storage_dir": "/tmp/lipserve-test-configs",
        "pipeline": {
            "max_ongoing_requests": 3,
            "max_queued_requests": 17,
            "num_cpus": 0.75,
            "graceful_shutdown_timeout_s": 321,
            "health_check_period_s": 7,
            "health_check_timeout_s": 41,
            "autoscaling": {"min_replicas": 2, "max_replicas": 9, "initial_replicas": 3,
                            "target_ongoing_requests": 1.25, "upscale_delay_s": 11,
                            "downscale_delay_s": 222, "metrics_interval_s": 2.5},
        },
        "ingress": {"num_replicas": 4, "num_cpus": 0.3, "max_ongoing_requests": 55,
                    "max_queued_requests": 66},
    })


def test_pipeline_options_follow_args():
    opts = pipeline_options(_custom_args())
    assert opts["name"] == "PipelineServer"
    assert opts["max_ongoing_requests"] == 3
    assert opts["max_queued_requests"] == 17
    assert opts["graceful_shutdown_timeout_s"] == 321
    assert opts["health_check_period_s"] == 7
    assert opts["health_check_timeout_s"] == 41
    assert opts["ray_actor_options"] == {"num_cpus": 0.75}
    assert opts["autoscaling_config"] == {
        "min_replicas": 2, "max_replicas": 9, "initial_replicas": 3,
        "target_ongoing_requests": 1.25, "upscale_delay_s": 11, "downscale_delay_s": 222, "look_back_period_s": 30.0,
        "metrics_interval_s": 2.5,
    }
    assert "num_replicas" not in opts  # autoscaled
    assert "initial_replicas" not in pipeline_options(LipserveArgs())["autoscaling_config"]


def test_ingress_options_follow_args():
    opts = ingress_options(_custom_args())
    assert opts == {
        "name": "Ingress",
        "num_replicas": 4,
        "max_ongoing_requests": 55,
        "max_queued_requests": 66,
        "ray_actor_options": {"num_cpus": 0.3},
    }


def test_build_app_without_a_cluster():
    app = build_app(_custom_args())
    assert isinstance(app, serve.Application)
    for args in (_custom_args().model_dump(), None):
        assert isinstance(build_app(args), serve.Application)

    # The options reach the bound deployments (private attributes; Ray is pinned to 2.60.0).
    ingress = app._bound_deployment
    assert (ingress.name, ingress.num_replicas, ingress.max_ongoing_requests) == ("Ingress", 4, 55)
    assert ingress.ray_actor_options["num_cpus"] == 0.3
    config, pipeline_app = ingress.init_args
    assert config == _custom_args().model_dump()  # plain data, not the pydantic model
    assert isinstance(pipeline_app, serve.Application)
    pipeline = pipeline_app._bound_deployment
    assert pipeline.name == "PipelineServer"
    assert pipeline.max_ongoing_requests == 3
    assert pipeline.ray_actor_options["num_cpus"] == 0.75
    a = pipeline._deployment_config.autoscaling_config
    assert (a.min_replicas, a.max_replicas, a.initial_replicas) == (2, 9, 3)
    assert pipeline._deployment_config.graceful_shutdown_timeout_s == 321


def test_build_app_does_not_start_ray():
    # In a fresh interpreter, so that a cluster left by another test module cannot mask it.
    code = (
        "import ray; from ray import serve; from serve_app.app import build_app\n"
        "app = build_app({'storage_dir': '/tmp/lipserve-test-configs'})\n"
        "assert isinstance(app, serve.Application)\n"
        "print('initialized', ray.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "initialized False"
    if not ray.is_initialized():  # and in this process too, unless another module started Ray
        build_app(None)
        assert not ray.is_initialized()


def test_store_actor_options_follow_args():
    from serve_app.jobs.store_actor import STORE_ACTOR_NAME, actor_options

    default = actor_options(LipserveArgs().store_actor)
    assert default["name"] == STORE_ACTOR_NAME and default["lifetime"] == "detached"
    assert default["max_restarts"] == -1 and default["resources"] == {"node:__internal_head__": 0.001}
    custom = actor_options(LipserveArgs(store_actor={"pin_to_head": False, "max_task_retries": 9}).store_actor)
    assert "resources" not in custom and custom["max_task_retries"] == 9
