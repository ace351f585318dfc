"""k8s/postgres.yaml: the CloudNativePG cluster and the external-database Secret are well formed and
give the job store a URL it accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.jobs.backends import StoreConfigError, postgres_url

ROOT = Path(__file__).resolve().parents[2]
DOCS = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "k8s" / "postgres.yaml").read_text()) if d}


def test_cloudnativepg_cluster_is_highly_available():
    c = DOCS["Cluster"]
    assert c["apiVersion"] == "postgresql.cnpg.io/v1" and c["metadata"]["name"] == "lipserve-db"
    spec = c["spec"]
    assert spec["instances"] == 3
    assert spec["affinity"]["enablePodAntiAffinity"] is True  # instances on different nodes
    assert spec["bootstrap"]["initdb"] == {"database": "lipserve", "owner": "lipserve"}
    assert spec["storage"]["size"].endswith("Gi")
    assert int(spec["postgresql"]["parameters"]["max_connections"]) >= 100
    assert spec["primaryUpdateMethod"] == "switchover"


def test_external_database_secret_holds_a_url_the_store_accepts(monkeypatch):
    s = DOCS["Secret"]
    assert s["apiVersion"] == "v1" and s["type"] == "Opaque"
    url = s["stringData"]["LIPSERVE_DATABASE_URL"]
    assert "CHANGE-ME" in url  # a placeholder, never a real password
    monkeypatch.setenv("LIPSERVE_DATABASE_URL", url)
    assert postgres_url(None) == url
    assert postgres_url("postgresql://other/db") == "postgresql://other/db"  # config wins
    monkeypatch.delenv("LIPSERVE_DATABASE_URL")
    with pytest.raises(StoreConfigError, match="LIPSERVE_DATABASE_URL"):
        postgres_url(None)
    with pytest.raises(StoreConfigError, match="postgresql:// URL"):
        postgres_url("/data/lipserve/jobs.sqlite3")


def test_upgrade_notes_cover_both_paths():
    text = (ROOT / "k8s" / "UPGRADES.md").read_text()
    for needle in ("serveConfigV2", "rayClusterConfig", "SKIP LOCKED", "LIPSERVE_DATABASE_URL", "lipserve-db-app",
                   "gcsFaultToleranceOptions"):
        assert needle in text, needle


def test_postgres_store_settings_are_checked_when_the_config_loads():
    from serve_app.config import LipserveArgs

    assert LipserveArgs(job_store="postgres").database_url is None  # URL from the environment
    with pytest.raises(ValueError, match="not an SQLite path"):
        LipserveArgs(job_store="postgres", database_url="/data/jobs.sqlite3")
    with pytest.raises(ValueError, match="set job_store: postgres"):
        LipserveArgs(job_store="actor", database_url="postgresql://db/lipserve")


def test_postgres_store_never_falls_back_to_sqlite(monkeypatch):
    from serve_app.config import LipserveArgs
    from serve_app.jobs.backends import open_job_store

    monkeypatch.delenv("LIPSERVE_DATABASE_URL", raising=False)
    with pytest.raises(StoreConfigError, match="LIPSERVE_DATABASE_URL"):
        open_job_store(LipserveArgs(job_store="postgres"))
