"""The settings of the worker's edges: where videos are stored, where photos may come
from, what it serves over HTTP (metrics, webhooks, the dashboard) and how it logs.
Split from ``_groups`` (the service's own groups) to keep each module readable; both
are composed into ``Settings`` by ``service.config``.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr, field_validator, model_validator

from service.media.addresses import parse_host_ports
from service.setting import Duration, Group, Port, setting


class StorageSettings(Group):
    supabase_url: str | None = setting(
        None,
        env="SUPABASE_URL",
        description="Supabase project URL, https:// (https://<ref>.supabase.co; http:// only "
        "on this machine): videos go to its Storage; unset: see SORA_STORAGE.",
    )
    service_role_key: SecretStr | None = setting(
        None,
        env="SUPABASE_SERVICE_ROLE_KEY",
        description="Supabase service-role key (never logged).",
    )
    backend: Literal["auto", "supabase", "local"] = setting(
        "auto",
        env="SORA_STORAGE",
        description="Where videos go: supabase (SUPABASE_URL); local: this machine's disk, "
        "served by the worker behind a reverse proxy at SORA_PUBLIC_URL (not loopback); "
        "auto: Supabase when SUPABASE_URL is set, else local disk only where stand-ins are "
        "allowed (SORA_STAND_INS).",
    )
    video_bucket: str = setting(
        "hug-videos", env="SORA_VIDEO_BUCKET", description="Bucket for finished videos."
    )
    image_bucket: str = setting(
        "hug-images", env="SORA_IMAGE_BUCKET", description="Bucket for images (demo photos)."
    )
    rendition_bitrate: int = setting(
        0,
        env="SORA_RENDITION_BITRATE",
        ge=0,
        le=50_000,
        description="Target kbit/s of a smaller H.264 copy stored beside each video "
        "(rendition_url); 0: no rendition.",
    )

    @field_validator("supabase_url")
    @classmethod
    def _supabase_over_tls(cls, value: str | None) -> str | None:
        """The service-role key goes with every request: never in clear over a network."""
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname)):
            return value
        raise ValueError(
            "use an https:// URL (the service-role key goes with every request); plain "
            "http:// is taken only for a server on this machine (localhost, 127.0.0.1, ::1)"
        )

    @model_validator(mode="after")
    def _supabase_pair(self) -> StorageSettings:
        if (self.supabase_url is None) != (self.service_role_key is None):
            raise ValueError("set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY together")
        if self.backend == "supabase" and self.supabase_url is None:
            raise ValueError(
                "SORA_STORAGE=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"
            )
        if self.backend == "local" and self.supabase_url is not None:
            raise ValueError(
                "SORA_STORAGE=local and SUPABASE_URL are both set: videos go to one place; "
                "unset one"
            )
        return self

    @property
    def uses_supabase(self) -> bool:
        return self.supabase_url is not None


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PhotoSettings(Group):
    max_bytes: int = setting(
        15_000_000, env="SORA_IMAGE_MAX_BYTES", gt=0, description="Largest input photo accepted."
    )
    timeout: Duration = setting(
        timedelta(seconds=20),
        env="SORA_IMAGE_TIMEOUT",
        description="Seconds allowed to fetch one photo.",
    )
    allow_hosts: str = setting(
        "",
        env="SORA_IMAGE_ALLOW_HOSTS",
        description="Photo hosts on loopback/private networks to allow, as host:port "
        "entries separated by commas (e.g. photos.internal:8443,10.0.0.5:80). Every "
        "other non-public address is refused; the local storage server is allowed itself.",
    )

    @field_validator("allow_hosts")
    @classmethod
    def _allow_hosts_shape(cls, value: str) -> str:
        parse_host_ports(value)  # raises ValueError naming the bad entry
        return value

    @property
    def allow_list(self) -> frozenset[tuple[str, int]]:
        return parse_host_ports(self.allow_hosts)


class HttpSettings(Group):
    host: str = setting(
        "127.0.0.1",
        env="SORA_HTTP_HOST",
        description="Address of the worker's HTTP server (/metrics, /healthz, /readyz); "
        "0.0.0.0 in a container so that a scraper can reach it.",
    )
    port: Port = setting(
        8091,
        env="SORA_HTTP_PORT",
        description="Port of the worker's HTTP server; 0 takes any free port (said in the "
        "log). Replicas on one machine each need their own.",
    )
    webhook_url: str | None = setting(
        None,
        env="SORA_WEBHOOK_URL",
        description="Public base URL of this worker's HTTP server; Replicate predictions "
        "then report to {SORA_WEBHOOK_URL}/webhooks/replicate.",
    )
    metrics_token: SecretStr | None = setting(
        None,
        env="SORA_METRICS_TOKEN",
        description="If set, /metrics answers only requests carrying "
        "'Authorization: Bearer <token>' (/healthz and /readyz stay open for probes).",
    )
    webhook_host: str = setting(
        "127.0.0.1",
        env="SORA_WEBHOOK_HOST",
        description="Address of the webhook listener when SORA_WEBHOOK_PORT is set.",
    )
    webhook_port: Port | None = setting(
        None,
        env="SORA_WEBHOOK_PORT",
        description="Serve provider webhooks on a listener of their own on this port (the "
        "one to expose to providers), apart from /metrics and the probes; unset: on "
        "SORA_HTTP_PORT.",
    )


class DashboardSettings(Group):
    """``sora-worker dashboard``: a page of the queue and its videos (docs/operations.md)."""

    host: str = setting(
        "127.0.0.1",
        env="SORA_DASHBOARD_HOST",
        description="Address the dashboard listens on; any address but loopback needs "
        "SORA_DASHBOARD_TOKEN.",
    )
    port: Port = setting(
        8092, env="SORA_DASHBOARD_PORT", description="Port of the dashboard; 0 takes any."
    )
    token: SecretStr | None = setting(
        None,
        env="SORA_DASHBOARD_TOKEN",
        description="If set, every request to the dashboard must carry it: once as "
        "?token=... (then a cookie) or as 'Authorization: Bearer <token>'.",
    )
    origin: str | None = setting(
        None,
        env="SORA_DASHBOARD_ORIGIN",
        description="The dashboard's public origin behind a reverse proxy "
        "(https://ops.example.com): its host is accepted and its actions must come from it.",
    )
    refresh: Duration = setting(
        timedelta(seconds=2),
        env="SORA_DASHBOARD_REFRESH",
        description="Seconds between the live page's reads of the table (a new row "
        "appears at once: LISTEN wakes it).",
    )

    @field_validator("origin")
    @classmethod
    def _origin_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.rstrip("/")
        if not re.match(r"^https?://[^/?#@\s]+$", value):
            raise ValueError("must be a scheme and host, like https://ops.example.com")
        return value


class LogSettings(Group):
    format: Literal["auto", "json", "console"] = setting(
        "auto",
        env="SORA_LOG_FORMAT",
        description="auto: console on a terminal, JSON lines otherwise.",
    )
    level: Literal["debug", "info", "warning", "error"] = setting(
        "info", env="SORA_LOG_LEVEL", description="debug shows every poll and wake-up."
    )
