"""What every HTTP handler shares: the archive, the settings, limits, and error responses."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from pacs.archive import Archive
from pacs.config import Settings
from pacs.web.dicomjson import MEDIA_TYPE as DICOM_JSON
from pacs.web.multipart import parse_media_type, split_list

__all__ = ["DEFAULT_MAX_BODY", "WebContext", "bad_request", "headers_only", "http_error",
           "require_json", "too_large"]

DEFAULT_MAX_BODY = 4 * 1024**3  # bytes of one STOW-RS request body


def http_error(cls: type[web.HTTPError], message: str) -> web.HTTPError:
    """An HTTP error with a small JSON body ``{"error": message}``."""
    return cls(text=json.dumps({"error": message}), content_type="application/json")


def too_large(message: str, limit: int, size: int) -> web.HTTPError:
    return web.HTTPRequestEntityTooLarge(limit, size, text=json.dumps({"error": message}),
                                         content_type="application/json")


def count_param(params: Mapping[str, str], name: str) -> int | None:
    """A non-negative integer query parameter (limit, offset, since); None when absent."""
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer, not {raw!r}") from None
    if value < 0:
        raise bad_request(f"{name} must not be negative")
    if value >= 2**63:  # larger overflows the C-level slicing of the result
        raise bad_request(f"{name} is too large")
    return value


async def headers_only(request: web.Request, response: web.StreamResponse) -> bool:
    """After ``prepare``: a HEAD request is answered with the headers alone (aiohttp's
    StreamResponse would send whatever is written next, putting a keep-alive client out of
    step). True when the response is complete."""
    if request.method != "HEAD":
        return False
    await response.write_eof()
    return True


def require_json(request: web.Request, what: str) -> None:
    """406 unless the Accept header (if any) allows DICOM JSON."""
    media = [parse_media_type(m)[0] for m in split_list(request.headers.get("Accept", ""))]
    if media and not any(m in (DICOM_JSON, "application/json", "application/*", "*/*")
                         for m in media):
        raise http_error(web.HTTPNotAcceptable, f"{what} is offered as {DICOM_JSON}")


def bad_request(message: str) -> web.HTTPError:
    return http_error(web.HTTPBadRequest, message)


def _max_body(settings: Settings) -> int:
    """The largest request body accepted (``http_max_body``, 413 beyond)."""
    return settings.http_max_body


@dataclass
class WebContext:
    archive: Archive
    settings: Settings
    max_body: int = DEFAULT_MAX_BODY
    dicom_port: int = 0
    http_port: int = 0

    @classmethod
    def create(cls, archive: Archive, dicom_port: int = 0) -> WebContext:
        settings = archive.settings
        return cls(archive, settings, _max_body(settings), dicom_port or settings.port,
                   settings.http_port)

    def base_url(self, request: web.Request) -> str:
        """scheme://host[:port] as the client addressed us (for RetrieveURL)."""
        return f"{request.scheme}://{request.host}"
