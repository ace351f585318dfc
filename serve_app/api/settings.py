"""DRAFT config sections for the production API, to be merged into ``LipserveArgs``:

- ``auth: AuthSettings``;
- ``webhooks: WebhookSettings``;
- ``UrlInputSettings``' fields go into ``JobSettings`` (``jobs.allow_private_urls`` and friends).

Kept here (not in serve_app/config.py) while the lead moves that file; same strictness
(``extra="forbid"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from actors.errors import InvalidParameterError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantLimits(_Strict):
    """Per-tenant overrides; ``None`` = the ``auth`` default."""

    max_queued: int | None = Field(None, ge=0)
    max_running: int | None = Field(None, ge=1)
    max_priority: int | None = None


@dataclass(frozen=True)
class ResolvedLimits:
    max_queued: int  # queued jobs of this tenant; past it POST /v1/jobs answers 429 + Retry-After
    max_running: int  # running jobs of this tenant at once; the dispatcher skips the tenant's others
    max_priority: int

    def check_priority(self, requested: int) -> int:
        if requested > self.max_priority:
            raise InvalidParameterError(f"priority {requested} is over this tenant's ceiling of {self.max_priority}",
                                        path="priority")
        return requested


class AuthSettings(_Strict):
    # One 'tenant:key' per line, '#' comments; joins the keys of env LIPSERVE_API_KEYS.
    keys_file: str | None = None
    admin_tenants: list[str] = Field(default_factory=list)  # may see owner/attempts details
    max_priority: int = 100  # ceiling of the 'priority' a tenant may ask for (admins: 1000)
    max_queued_per_tenant: int = Field(50, ge=0)
    max_running_per_tenant: int = Field(4, ge=1)
    tenants: dict[str, TenantLimits] = Field(default_factory=dict)

    def limits_for(self, tenant: str, *, is_admin: bool = False) -> ResolvedLimits:
        o = self.tenants.get(tenant, TenantLimits())
        ceiling = o.max_priority if o.max_priority is not None else (1000 if is_admin else self.max_priority)
        return ResolvedLimits(
            max_queued=o.max_queued if o.max_queued is not None else self.max_queued_per_tenant,
            max_running=o.max_running if o.max_running is not None else self.max_running_per_tenant,
            max_priority=ceiling)


class WebhookSettings(_Strict):
    max_attempts: int = Field(8, ge=1)
    timeout_s: float = Field(10.0, gt=0)
    backoff_s: float = Field(5.0, gt=0)  # first retry delay, doubled per attempt
    max_backoff_s: float = Field(3600.0, gt=0)
    poll_s: float = Field(2.0, gt=0)  # how often the worker looks for due deliveries
    concurrency: int = Field(8, ge=1)
    # Targets on private networks (off: the same address checks as URL inputs).
    allow_private: bool = False
    # Signing secret: env LIPSERVE_WEBHOOK_SECRET; per tenant: env LIPSERVE_WEBHOOK_SECRETS
    # ('tenant:secret,...'), which wins for the tenants it names.


class UrlInputSettings(_Strict):
    """Fields for ``JobSettings`` (URL inputs)."""

    allow_private_urls: bool = False  # tests and trusted networks only
    # Exceptions while the check is on: '10.0.0.0/8' or '10.1.2.3:9000' (e.g. an internal bucket).
    trusted_url_addresses: list[str] = Field(default_factory=list)
    url_deadline_s: float = Field(300.0, gt=0)
    url_connect_timeout_s: float = Field(10.0, gt=0)
    url_min_rate_bytes_s: float = Field(16 * 1024, ge=0)
    url_rate_grace_s: float = Field(10.0, ge=0)
    url_max_redirects: int = Field(3, ge=0, le=10)
