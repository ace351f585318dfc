"""HTTP + Ray Serve layer of lipserve: ingress, pipeline deployment, Ray actors, job store."""
