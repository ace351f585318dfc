"""k8s/networkpolicy.yaml: parses, and opens exactly what docs/SECURITY.md says."""

from __future__ import annotations

from pathlib import Path

import yaml

POLICY = Path(__file__).resolve().parents[3] / "k8s" / "networkpolicy.yaml"
RAY_PODS = {"matchLabels": {"ray.io/is-ray-node": "yes"}}


def load() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    assert all(d["apiVersion"] == "networking.k8s.io/v1" and d["kind"] == "NetworkPolicy" for d in docs)
    by_name = {d["metadata"]["name"]: d for d in docs}
    assert len(by_name) == len(docs)
    return by_name


def ingress_rules(policies):
    for p in policies.values():
        for rule in p["spec"].get("ingress", []):
            yield p["metadata"]["name"], rule


def test_default_deny_covers_every_pod_both_ways():
    deny = load()["lipserve-default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


def test_only_port_8000_is_open_to_the_gateway():
    outside = []
    for name, rule in ingress_rules(load()):
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                ports = sorted(p["port"] for p in rule["ports"])
                outside.append((ns, ports))
            else:
                assert peer == {"podSelector": RAY_PODS}, name  # anything else: Ray pods only
    assert sorted(outside) == [("kuberay-system", [8265, 52365]), ("lipserve-gateway", [8000]),
                               ("monitoring", [8080])]


def test_egress_excludes_metadata_and_private_ranges():
    egress = load()["lipserve-egress"]["spec"]["egress"]
    public = [r for r in egress if any(p.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for p in r["to"])]
    assert len(public) == 1
    excluded = set(public[0]["to"][0]["ipBlock"]["except"])
    assert {"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"} <= excluded


def test_head_does_not_expose_the_dashboard_and_keys_come_from_a_secret():
    spec = yaml.safe_load((POLICY.parent / "rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    pods = [head["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e for c in pod["containers"] for e in c.get("env", [])}
        for name in ("LIPSERVE_API_KEYS", "LIPSERVE_WEBHOOK_SECRET"):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "lipserve-auth"
