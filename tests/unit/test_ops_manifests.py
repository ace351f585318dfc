"""The operator's manifests: the PrometheusRule (parses, every alert documented, `promtool check
rules` passes, and `promtool test rules` shows each alert firing on the failure it is for and not
on a healthy series) and the Grafana dashboard JSON (parses, covers what operators asked for).

promtool comes from Debian's `prometheus` package (apt-get install -y --no-install-recommends prometheus).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "k8s" / "prometheus-rules.yaml"
DASHBOARD = ROOT / "docs" / "ops" / "grafana-lipserve.json"
RUNBOOK = ROOT / "docs" / "ops" / "ALERTS.md"

REQUIRED_ALERTS = {
    "LipserveSuccessRateLow", "LipserveQueueWaitGrowing", "LipserveJobStuck",
    "LipserveNoReadyPipelineReplica", "LipserveGpuMemoryNearFull", "LipserveDiskSpaceLow",
}
GIB = 1024 ** 3


def load_rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def alerts(manifest: dict) -> list[dict]:
    return [r for g in manifest["spec"]["groups"] for r in g["rules"] if "alert" in r]


def anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the markdown headings."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, re.M)}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:  # an install step, not a reason to skip
        raise RuntimeError("promtool is missing: apt-get install -y --no-install-recommends prometheus")
    return path


def write_rule_file(tmp: Path, strip_annotations: bool = False) -> Path:
    """spec.groups as a plain Prometheus rule file (what the operator hands Prometheus)."""
    groups = load_rules()["spec"]["groups"]
    if strip_annotations:  # promtool compares annotations exactly; their templates are checked above
        for g in groups:
            for r in g["rules"]:
                r.pop("annotations", None)
    path = tmp / "lipserve-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------- rules
def test_prometheus_rule_manifest_shape():
    manifest = load_rules()
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1" and manifest["kind"] == "PrometheusRule"
    names = [a["alert"] for a in alerts(manifest)]
    assert REQUIRED_ALERTS <= set(names) and len(names) == len(set(names))


def test_every_alert_has_severity_summary_and_a_runbook_section():
    runbook = RUNBOOK.read_text()
    sections = anchors(runbook)
    for rule in alerts(load_rules()):
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        notes = rule["annotations"]
        assert notes.get("summary", "").strip() and notes.get("description", "").strip(), name
        url = notes["runbook_url"]
        assert url.startswith("docs/ops/ALERTS.md#"), url
        assert url.split("#", 1)[1] in sections, f"{name}: no section {url} in ALERTS.md"
        assert rule.get("for"), f"{name} fires on a single evaluation"


def test_every_metric_the_rules_and_dashboard_use_is_documented():
    runbook = RUNBOOK.read_text()
    used = set(re.findall(r"\bray_[a-z_]+", RULES.read_text() + DASHBOARD.read_text()))
    base = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    missing = {m for m in base if m not in runbook}
    assert not missing, f"metrics used but not documented in ALERTS.md: {sorted(missing)}"


def test_promtool_check_rules(tmp_path):
    out = subprocess.run([promtool(), "check", "rules", str(write_rule_file(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in load_rules()['spec']['groups'])} rules found" in out.stdout


def _case(series: dict[str, str], alert: str, eval_time: str, expected: list[dict]) -> dict:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [{"eval_time": eval_time, "alertname": alert,
                             "exp_alerts": [{"exp_labels": labels} for labels in expected]}],
    }


FINISHED = 'ray_lipserve_jobs_finished_total{{status="{}",error_code="{}",WorkerId="w1"}}'
WAIT = 'ray_lipserve_queue_wait_seconds_bucket{{le="{}",WorkerId="w1"}}'
REPLICAS = 'ray_serve_deployment_replica_healthy{deployment="PipelineServer",replica="r1",WorkerId="w1"}'


def _wait_buckets(slow_per_min: str) -> dict[str, str]:
    """Queue-wait histogram where every job waits ~500 s (between the 120 and 600 s bounds)."""
    return {WAIT.format("10"): "0x60", WAIT.format("120"): "0x60",
            WAIT.format("600"): slow_per_min, WAIT.format("+Inf"): slow_per_min}


PAGE, TICKET = {"severity": "page"}, {"severity": "ticket"}
CASES = [
    # 80 % success over 15 min: fires. 99 %: silent. 66 % but only a handful of jobs: silent.
    _case({FINISHED.format("succeeded", "none"): "0+8x40", FINISHED.format("failed", "worker_lost"): "0+2x40"},
          "LipserveSuccessRateLow", "30m", [PAGE]),
    _case({FINISHED.format("succeeded", "none"): "0+99x40", FINISHED.format("failed", "no_face"): "0+1x40"},
          "LipserveSuccessRateLow", "30m", []),
    _case({FINISHED.format("succeeded", "none"): "0+0.2x40", FINISHED.format("failed", "no_face"): "0+0.1x40"},
          "LipserveSuccessRateLow", "30m", []),
    # Slow waits while the queue grows: fires. Same waits while the backlog drains: silent.
    _case({**_wait_buckets("0+1x60"), 'ray_lipserve_queue_depth{WorkerId="w1"}': "0+1x60"},
          "LipserveQueueWaitGrowing", "45m", [TICKET]),
    _case({**_wait_buckets("0+1x60"), 'ray_lipserve_queue_depth{WorkerId="w1"}': "60-1x60"},
          "LipserveQueueWaitGrowing", "45m", []),
    # Last progress frozen at t=0: fires once 10 min old. Progress that keeps moving: silent.
    _case({'ray_lipserve_job_last_progress_timestamp{WorkerId="w1"}': "0x30"}, "LipserveJobStuck", "20m", [PAGE]),
    _case({'ray_lipserve_job_last_progress_timestamp{WorkerId="w1"}': "0+60x30"}, "LipserveJobStuck", "20m", []),
    # The only replica turns unhealthy at 10 min: fires 5 min later, not before.
    _case({REPLICAS: "1x10 0x20"}, "LipserveNoReadyPipelineReplica", "20m", [PAGE]),
    _case({REPLICAS: "1x10 0x20"}, "LipserveNoReadyPipelineReplica", "12m", []),
    _case({'up{job="ray"}': "1x20"}, "LipserveNoReadyPipelineReplica", "10m",
          [{"severity": "page", "deployment": "PipelineServer"}]),  # the metric is gone altogether
    _case({'ray_lipserve_gpu_memory_used_bytes{actor="gen-0",gpu="0",WorkerId="w1"}': f"{int(76 * GIB)}x20",
           'ray_lipserve_gpu_memory_total_bytes{actor="gen-0",gpu="0",WorkerId="w1"}': f"{80 * GIB}x20",
           'ray_lipserve_gpu_memory_used_bytes{actor="gen-1",gpu="1",WorkerId="w2"}': f"{40 * GIB}x20",
           'ray_lipserve_gpu_memory_total_bytes{actor="gen-1",gpu="1",WorkerId="w2"}': f"{80 * GIB}x20"},
          "LipserveGpuMemoryNearFull", "15m", [{"severity": "ticket", "actor": "gen-0", "gpu": "0"}]),
    _case({'ray_lipserve_disk_free_bytes{path="/data",WorkerId="w1"}': f"{3 * GIB}x20",
           'ray_lipserve_disk_total_bytes{path="/data",WorkerId="w1"}': f"{500 * GIB}x20"},
          "LipserveDiskSpaceLow", "15m", [{"severity": "page", "path": "/data"}]),
    _case({'ray_lipserve_disk_free_bytes{path="/data",WorkerId="w1"}': f"{200 * GIB}x20",
           'ray_lipserve_disk_total_bytes{path="/data",WorkerId="w1"}': f"{500 * GIB}x20"},
          "LipserveDiskSpaceLow", "15m", []),
]


def test_each_alert_fires_on_its_failure_and_not_on_health(tmp_path):
    rules = write_rule_file(tmp_path, strip_annotations=True)
    tests = tmp_path / "lipserve-rules.test.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": CASES},
                                    sort_keys=False))
    assert {c["alert_rule_test"][0]["alertname"] for c in CASES} == REQUIRED_ALERTS
    out = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------------------------ dashboard
def test_grafana_dashboard_covers_the_operators_questions():
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    assert dash["uid"] and dash["title"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needle in ("ray_lipserve_jobs_finished_total", "ray_lipserve_queue_depth",
                   "ray_lipserve_queue_wait_seconds_bucket", "ray_lipserve_stage_seconds_bucket",
                   "ray_lipserve_stage_fps", "ray_serve_deployment_replica_healthy",
                   "ray_lipserve_gpu_memory_used_bytes", "by (error_code)"):
        assert needle in exprs, f"the dashboard shows nothing for {needle}"
    assert "histogram_quantile(0.5" in exprs and "histogram_quantile(0.95" in exprs
    # Every panel reads the dashboard's data source variable, so one import works anywhere.
    assert {t["datasource"]["uid"] for p in panels for t in p["targets"]} == {"${datasource}"}
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource"]


def test_grafana_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_dashboard_queries_parse_as_promql(tmp_path):
    """Each panel query, wrapped in a recording rule, passes promtool's PromQL parser."""
    dash = json.loads(DASHBOARD.read_text())
    rules = [{"record": f"dashboard:panel{p['id']}:{t['refId'].lower()}", "expr": t["expr"]}
             for p in dash["panels"] for t in p["targets"]]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
