"""Where a URL really points: Hugging Face, Civitai (through its API), or any other https URL."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from services.common import netsafe
from services.common.hashing import parse_sha256
from services.common.settings import Settings
from services.worker.http import AccessRefused, Credential, DownloadError, Http


@dataclass
class Plan:
    url: str  # what to GET first (it may redirect to a CDN, which never sees the token)
    source: str  # huggingface | civitai | url
    credential: Credential | None = None
    filename: str | None = None
    sha256: str | None = None
    page: str | None = None  # where a person fixes access (licence page, token settings)


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


def plan(url: str, settings: Settings, http: Http) -> Plan:
    url = netsafe.mirrored(url, settings.hf_endpoint)
    host = _host(url)
    if host in _hf_hosts(settings):
        return _huggingface(url, settings)
    if host in _civitai_hosts(settings):
        return _civitai(url, settings, http)
    return Plan(url=url, source="url", filename=_basename(url))


def _hf_hosts(settings: Settings) -> set[str]:
    host = _host(settings.hf_endpoint)
    return {host, "hf.co", "www.huggingface.co"} if host == "huggingface.co" else {host}


def _civitai_hosts(settings: Settings) -> set[str]:
    host = _host(settings.civitai_endpoint)
    return {host, "www.civitai.com"} if host == "civitai.com" else {host}


def _huggingface(url: str, settings: Settings) -> Plan:
    parts = urlsplit(url)
    path = parts.path
    # A file page (/blob/) and the file (/resolve/) differ by one word.
    path = re.sub(r"^(/(?:datasets/|spaces/)?[^/]+/[^/]+)/blob/", r"\1/resolve/", path)
    match = re.match(r"^/((?:datasets/|spaces/)?[^/]+/[^/]+)/resolve/[^/]+/.+", path)
    if not match:
        raise DownloadError(
            f"{url} is not a Hugging Face file URL: use https://huggingface.co/<org>/<repo>/resolve/<revision>/<file>"
        )
    endpoint = settings.hf_endpoint.rstrip("/")
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    return Plan(
        url=urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")),
        source="huggingface",
        credential=Credential(settings.hf_endpoint, token) if token else None,
        filename=_basename(url),
        page=f"{endpoint}/{match.group(1)}",
    )


def _civitai(url: str, settings: Settings, http: Http) -> Plan:
    endpoint = settings.civitai_endpoint.rstrip("/")
    token = settings.civitai_token.get_secret_value() if settings.civitai_token else None
    credential = Credential(endpoint, token) if token else None
    parts = urlsplit(url)
    version = None
    if m := re.match(r"^/api/download/models/(\d+)", parts.path):
        version = m.group(1)
    elif m := re.match(r"^/models/(\d+)", parts.path):
        version = parse_qs(parts.query).get("modelVersionId", [None])[0]
        if version is None:
            model = _api(http, f"{endpoint}/api/v1/models/{m.group(1)}", credential, "model")
            versions = model.get("modelVersions") or []
            if not versions:
                raise DownloadError(f"Civitai model {m.group(1)} has no version to download")
            version = str(versions[0]["id"])
    else:
        raise DownloadError(f"{url} is not a Civitai model or download URL: use https://civitai.com/models/<id>")
    info = _api(http, f"{endpoint}/api/v1/model-versions/{version}", credential, "model version")
    files = info.get("files") or []
    chosen = next((f for f in files if f.get("primary")), files[0] if files else None)
    if chosen is None:
        raise DownloadError(f"Civitai model version {version} lists no file")
    sha256 = parse_sha256(str((chosen.get("hashes") or {}).get("SHA256", "")))
    return Plan(
        # The API's download URL redirects to a signed CDN URL: it is fetched anew at every attempt,
        # so a signature that expires during a long download is simply replaced.
        url=chosen.get("downloadUrl") or f"{endpoint}/api/download/models/{version}",
        source="civitai",
        credential=credential,
        filename=chosen.get("name"),
        sha256=sha256,
        page=f"{endpoint}/models/{info.get('modelId', '')}",
    )


def _api(http: Http, url: str, credential: Credential | None, what: str) -> dict:
    try:
        data = http.get_json(url, credential)
    except AccessRefused:
        raise DownloadError(
            f"Civitai refused the {what} lookup: this file needs a Civitai account. Set CIVITAI_TOKEN"
            " (dashboard settings or environment) to an API key from civitai.com/user/account"
        ) from None
    if not isinstance(data, dict):
        raise DownloadError(f"Civitai's API answered something unexpected for the {what}")
    return data


def _basename(url: str) -> str | None:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return name or None


def access_message(plan: Plan, status: int) -> str:
    """What to do when the source refuses access; names the token's setting, never its value."""
    if plan.source == "huggingface":
        if plan.credential is None:
            return (
                f"Hugging Face refused access ({status}): this model is gated or private. Accept its licence"
                f" at {plan.page} and set HF_TOKEN (dashboard settings or environment)"
            )
        return (
            f"Hugging Face refused access ({status}) with the HF_TOKEN that is set: accept the licence at"
            f" {plan.page} with the account that owns the token, or use a token with read access"
        )
    if plan.source == "civitai":
        if plan.credential is None:
            return f"Civitai refused access ({status}): this file needs a Civitai account. Set CIVITAI_TOKEN"
        return f"Civitai refused access ({status}) with the CIVITAI_TOKEN that is set: check the key at {plan.page}"
    return f"the server refused access ({status}): the file is private or the link has expired"
