"""REST ``/modalities``: the remote AEs known to this process, C-ECHO and C-STORE to them.

::

    GET    /modalities                  AE titles (?expand: {aet: {AET, Host, Port, ...}})
    GET    /modalities/{aet}            one remote
    PUT    /modalities/{aet}            create or replace: {"Host": ..., "Port": ...[, ...]}
    DELETE /modalities/{aet}
    POST   /modalities/{aet}/echo       C-ECHO
    POST   /modalities/{aet}/store      C-STORE resources: {"Resources": [ids]} or "id"

The table is ``pacs.remotes.RemoteRegistry``: the ``[remote.AET]`` settings plus the entries
PUT here, kept in ``data_dir/state/modalities.json`` (they survive a restart; every worker's
C-MOVE, storage commitment reports and forwarding see them at once). A PUT entry overrides a
settings entry of the same AE title; DELETE removes a PUT entry (the settings entry, if any,
applies again) and answers 409 for an AE defined only in the settings file. Access control of
calling AEs uses the settings file only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from pacs.config import RemoteAE
from pacs.errors import ConfigError
from pacs.index.records import InstanceRecord
from pacs.remotes import ConfiguredRemoteError, RemoteRegistry
from pacs.server.scu import SCUError, StoreSCU, remote_tls, send_instances
from pacs.web.context import WebContext, bad_request, http_error

__all__ = ["routes"]

log = logging.getLogger("pacs.web.rest")

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
Resolver = Callable[[WebContext, str], "list[InstanceRecord] | None"]


def _describe(remote: RemoteAE) -> dict[str, Any]:
    return {"AET": remote.aet, "Host": remote.host, "Port": remote.port,
            "AllowMove": remote.move_destination, "UseDicomTls": remote.tls}


def _aet(raw: str) -> str:
    if not raw.strip() or len(raw) > 16 or any(c == "\\" or ord(c) < 32 for c in raw):
        raise bad_request(f"{raw!r} is not a valid AE title (1-16 characters, no '\\')")
    return raw.strip()


def _remote(aet: str, body: Any) -> RemoteAE:
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object with Host and Port")
    unknown = set(body) - {"AET", "Host", "Port", "AllowMove", "UseDicomTls"}
    if unknown:
        raise bad_request(f"unknown field {sorted(unknown)[0]!r}")
    if "AET" in body and body["AET"] != aet:
        raise bad_request("AET differs from the one in the path")
    host, port = body.get("Host"), body.get("Port")
    if not isinstance(host, str) or not host.strip() or len(host) > 255 or any(
            ord(c) <= 32 for c in host):
        raise bad_request("Host must be a host name or address")
    try:
        host.encode("idna")  # what connecting does: empty or over-long labels fail there
    except UnicodeError:
        raise bad_request("Host must be a host name or address") from None
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise bad_request("Port must be an integer in [1, 65535]")
    allow = body.get("AllowMove", True)
    if not isinstance(allow, bool):
        raise bad_request("AllowMove must be true or false")
    tls = body.get("UseDicomTls", False)
    if not isinstance(tls, bool):
        raise bad_request("UseDicomTls must be true or false")
    return RemoteAE(aet, host, port, allow, tls=tls)


def _resources(body: Any) -> list[str]:
    if isinstance(body, str):
        body = {"Resources": [body]}
    if isinstance(body, list):
        body = {"Resources": body}
    if not isinstance(body, dict):
        raise bad_request('the body must be {"Resources": [ids]} or one id as a JSON string')
    unknown = set(body) - {"Resources", "Synchronous"}
    if unknown:
        raise bad_request(f"unknown field {sorted(unknown)[0]!r}")
    resources = body.get("Resources")
    if (not isinstance(resources, list) or not resources
            or not all(isinstance(r, str) and r for r in resources)):
        raise bad_request("Resources must be a non-empty list of ids")
    return list(dict.fromkeys(resources))


def routes(ctx: WebContext, resolve: Resolver) -> list[web.RouteDef]:
    registry = RemoteRegistry(ctx.settings)
    loop = asyncio.get_running_loop

    def known(request: web.Request) -> RemoteAE:
        aet = request.match_info["aet"]
        remote = registry.get(aet)
        if remote is None:
            raise http_error(web.HTTPNotFound, f"no such modality: {aet!r}")
        return remote

    async def body_of(request: web.Request) -> Any:
        try:
            return await request.json()
        except (ValueError, RecursionError):  # RecursionError: nested deeper than json parses
            raise bad_request("the body must be JSON") from None

    async def list_all(request: web.Request) -> web.Response:
        expand = request.query.get("expand")
        if expand is not None and expand.lower() not in ("", "true", "1", "false", "0"):
            raise bad_request("expand must be true or false")
        if expand is not None and expand.lower() in ("", "true", "1"):
            return web.json_response({a: _describe(r) for a, r in registry.all().items()})
        return web.json_response(list(registry.all()))

    async def get_one(request: web.Request) -> web.Response:
        return web.json_response(_describe(known(request)))

    async def put_one(request: web.Request) -> web.Response:
        aet = _aet(request.match_info["aet"])
        remote = _remote(aet, await body_of(request))
        if remote.tls:
            from pacs.server.tls import client_context

            try:  # what this archive presents and trusts, loaded now rather than at first use
                client_context(ctx.settings)
            except ConfigError as exc:
                raise http_error(web.HTTPConflict, f"UseDicomTls: {exc}") from None
        # fsyncs: off the event loop
        created = await loop().run_in_executor(ctx.archive.executor, registry.put, remote)
        log.info("REST: modality %s %s (%s:%d)", aet, "added" if created else "replaced",
                 remote.host, remote.port)
        return web.json_response(_describe(remote), status=201 if created else 200)

    async def delete_one(request: web.Request) -> web.Response:
        remote = known(request)
        try:
            removed = await loop().run_in_executor(ctx.archive.executor, registry.delete,
                                                   remote.aet)
        except ConfiguredRemoteError:
            raise http_error(web.HTTPConflict, f"{remote.aet} is defined in the settings "
                             "file; change it there") from None
        if not removed:  # deleted meanwhile by another request
            raise http_error(web.HTTPNotFound, f"no such modality: {remote.aet!r}")
        log.info("REST: modality %s removed%s", remote.aet,
                 "; its settings entry applies again" if registry.configured(remote.aet)
                 else "")
        return web.json_response({})

    async def echo(request: web.Request) -> web.Response:
        remote = known(request)
        try:
            scu = await StoreSCU.connect(remote.host, remote.port,
                                         calling_aet=ctx.settings.aet, called_aet=remote.aet,
                                         contexts=[(VERIFICATION, [IMPLICIT_LE])], timeout=10,
                                         tls=remote_tls(ctx.settings, remote))
            try:
                status = await scu.echo(timeout=10)
            finally:
                await scu.release()
        except (SCUError, OSError) as exc:
            raise http_error(web.HTTPBadGateway, f"C-ECHO to {remote.aet} failed: {exc}") \
                from None
        return web.json_response({"Status": status})

    async def store(request: web.Request) -> web.Response:
        remote = known(request)
        wanted = _resources(await body_of(request))
        records: dict[str, InstanceRecord] = {}
        for ident in wanted:
            found = await loop().run_in_executor(ctx.archive.executor, resolve, ctx, ident)
            if found is None:
                raise http_error(web.HTTPNotFound, f"no such resource: {ident!r}")
            records.update((r.sop_instance_uid, r) for r in found)
        items = [(r.location, r.attributes.get("SOPClassUID", ""), r.sop_instance_uid,
                  r.transfer_syntax_uid) for r in records.values()]
        counts = await send_instances(ctx.archive.store, items,
                                      (remote.host, remote.port, remote.aet), ctx.settings.aet,
                                      max_pdu=ctx.settings.max_pdu_size,
                                      tls=remote_tls(ctx.settings, remote))
        log.info("REST: C-STORE to %s: %d completed, %d warning, %d failed", remote.aet,
                 counts.completed, counts.warning, counts.failed)
        return web.json_response({
            "Description": f"C-STORE to {remote.aet}",
            "LocalAet": ctx.settings.aet, "RemoteAet": remote.aet,
            "InstancesCount": len(items),
            "Completed": counts.completed, "Warning": counts.warning, "Failed": counts.failed,
            "FailedInstances": counts.failed_uids,
        })

    return [
        web.get("/modalities", list_all),
        web.get("/modalities/{aet}", get_one),
        web.put("/modalities/{aet}", put_one),
        web.delete("/modalities/{aet}", delete_one),
        web.post("/modalities/{aet}/echo", echo),
        web.post("/modalities/{aet}/store", store),
    ]
