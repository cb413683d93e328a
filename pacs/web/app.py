"""The HTTP front door: an aiohttp application on the worker's own event loop.

::

    POST /dicom-web/studies[/{study}]                          STOW-RS       (stow.py)
    GET  /dicom-web/studies | /series | /instances ...         QIDO-RS       (qido.py)
    GET  /dicom-web/studies/{study}[/series/{s}[/instances/{i}]][/metadata]  WADO-RS (wado.py)
    GET  /dicom-web/.../instances/{i}/frames/{list} | /bulkdata/{tag}   frames  (frames.py)
    GET  /dicom-web/.../[frames/{n}/]rendered | .../thumbnail  JPEG/PNG      (render.py)
    GET  /viewer?StudyInstanceUID=...                           viewer page   (viewer.py)
    GET  /system, /statistics, /patients, /studies, ...        Orthanc-style REST (rest.py)
    /fhir/ServiceRequest, /fhir/ImagingStudy                    FHIR R4       (fhir.py)
    GET  /metrics                                               Prometheus    (pacs.metrics)
    POST /auth/token                                            bearer token  (auth.py)

With ``http_auth`` every route needs a user and a role (``pacs.web.auth``).

It shares the archive of the DIMSE server it runs beside (ingest path, query engine, blob
store); every worker serves HTTP on the shared port (``pacs.server.app.serve``). Knows nothing
of DIMSE.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from pacs import __version__, metrics
from pacs.archive import Archive
from pacs.web import auth, fhir, qido, render, rest, stow, viewer, wado
from pacs.web.context import WebContext

__all__ = ["WebServer", "build_app"]

log = logging.getLogger("pacs.web")

CONTEXT: web.AppKey[WebContext] = web.AppKey("context", WebContext)


def _system(ctx: WebContext) -> dict[str, Any]:
    return {
        "Name": "pacs-archive",
        "Version": __version__,
        "DicomAet": ctx.settings.aet,
        "DicomPort": ctx.dicom_port,
        "HttpPort": ctx.http_port,
        "DicomWeb": "/dicom-web",
        "StorageBackend": ctx.settings.store_backend,
    }


def _statistics(ctx: WebContext) -> dict[str, Any]:
    stats = ctx.archive.catalog.statistics()
    size = int(stats.get("total_size", 0))
    return {
        "CountPatients": stats["patients"],
        "CountStudies": stats["studies"],
        "CountSeries": stats["series"],
        "CountInstances": stats["instances"],
        "TotalDiskSize": str(size),
        "TotalDiskSizeMB": size // (1024 * 1024),
    }


def build_app(ctx: WebContext) -> web.Application:
    app = web.Application()
    app[CONTEXT] = ctx

    async def system(_request: web.Request) -> web.Response:
        return web.json_response(_system(ctx))

    async def statistics(_request: web.Request) -> web.Response:
        return web.json_response(_statistics(ctx))

    app.add_routes([web.get("/system", system), web.get("/statistics", statistics)])
    app.add_routes(stow.routes(ctx))
    app.add_routes(qido.routes(ctx))
    app.add_routes(render.routes(ctx))
    app.add_routes(wado.routes(ctx))
    app.add_routes(viewer.routes(ctx))
    app.add_routes(rest.routes(ctx))
    app.add_routes(fhir.routes(ctx))
    metrics.install(app, ctx)  # GET /metrics; counts HTTP responses by route
    auth.install(app, ctx)  # POST /auth/token; with http_auth, users and roles on every route
    return app


class WebServer:
    """Starts and stops the HTTP listener on the running loop."""

    def __init__(self, archive: Archive, dicom_port: int = 0, reuse_port: bool = False) -> None:
        """``reuse_port``: every worker listens on the HTTP port (SO_REUSEPORT), as on the
        DICOM one, so HTTP work (STOW-RS above all) uses every core."""
        self.context = WebContext.create(archive, dicom_port)
        self.reuse_port = reuse_port
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        settings = self.context.settings
        ssl_context = None
        if settings.http_tls:
            from pacs.server.tls import https_server_context

            ssl_context = https_server_context(settings)
        self.runner = web.AppRunner(build_app(self.context), access_log=None,
                                    handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, settings.http_host, settings.http_port,
                           reuse_address=True, reuse_port=self.reuse_port or None, backlog=1024,
                           ssl_context=ssl_context)
        try:
            await site.start()
        except OSError:
            # Fatal, like a DICOM port in use: serve() starts HTTP before DICOM, so nothing
            # has been accepted yet when the archive exits with its one-line error.
            await self.stop()
            raise
        for address in self.runner.addresses:
            host, port = address[:2]
            self.context.http_port = int(port)
            log.info("%s (DICOMweb, REST, viewer) listening on %s:%d",
                     "HTTPS" if ssl_context is not None else "HTTP", host, port)

    @property
    def port(self) -> int:
        return self.context.http_port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
