"""HTTP authentication and roles over a real ``pacs serve`` with ``http_auth`` on.

Users are made with ``python -m pacs user add --password-stdin`` (before the start and while the
server runs); clients are httpx, dicomweb-client on a requests session with Basic credentials
or a bearer token, and headless Chromium (Playwright) answering the Basic challenge of the
viewer like a user at the browser's prompt."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian

from pacs.audit import read_events
from tests.conftest import REPO, ArchiveProcess, free_port
from tests.dicomgen import make_ct

pytestmark = pytest.mark.integration

USERS = {"vera": ("viewer", "vera-pass"), "ulla": ("uploader", "ulla pass ü"),
         "adam": ("admin", "adam:pass")}
CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 10_000


def pacs_user(data_dir: Path, *args: str,
              password: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--password-stdin"] if password is not None else []
    return subprocess.run([sys.executable, "-m", "pacs", "user", *args, *extra,
                           "--data-dir", str(data_dir)],
                          input=(password + "\n") if password is not None else None,
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def add_user(data_dir: Path, name: str, role: str, password: str) -> None:
    proc = pacs_user(data_dir, "add", name, "--role", role, password=password)
    assert proc.returncode == 0, proc.stderr


def start(data_dir: Path, env: dict[str, str] | None = None) -> tuple[ArchiveProcess, str]:
    http_port = free_port()
    archive = ArchiveProcess(data_dir, free_port(), extra_args=["--http-port", str(http_port),
                                                               "--workers", "1"],
                             env={"PACS_HTTP_AUTH": "1", **(env or {})})
    archive.start()
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/system", timeout=2)  # any answer (401) means it listens
            return archive, base
        except httpx.TransportError:
            time.sleep(0.05)
    archive.stop()
    raise RuntimeError(f"HTTP did not come up:\n{archive.log()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[ArchiveProcess, str]]:
    data_dir = tmp_path_factory.mktemp("auth") / "data"
    for name, (role, password) in USERS.items():
        add_user(data_dir, name, role, password)
    archive, base = start(data_dir)
    yield archive, base
    archive.stop()


def creds(name: str) -> tuple[str, str]:
    return name, USERS[name][1]


def dicomweb(base: str, session: requests.Session) -> DICOMwebClient:
    return DICOMwebClient(url=f"{base}/dicom-web", session=session)


def basic_session(name: str, password: str | None = None) -> requests.Session:
    session = requests.Session()
    session.auth = (name, USERS[name][1] if password is None else password)
    return session


def instance(patient_id: str) -> pydicom.Dataset:
    ds = make_ct(patient_id=patient_id, patient_name="Auth^Alice")
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def login_events(archive: ArchiveProcess) -> list[dict[str, Any]]:
    return [e for e in read_events(archive.data_dir / "audit") if e["action"] == "login"]


def assert_challenge(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    challenges = response.headers.get_list("www-authenticate")
    assert any(c.startswith('Basic realm="pacs"') for c in challenges), challenges
    assert any(c.startswith('Bearer realm="pacs"') for c in challenges), challenges
    assert "error" in response.json()


def test_no_credentials_is_401_with_a_challenge(server) -> None:
    _archive, base = server
    with httpx.Client(base_url=base, timeout=10) as client:
        for method, path in [("GET", "/dicom-web/studies"), ("GET", "/system"),
                             ("GET", "/viewer?StudyInstanceUID=1.2.3"), ("GET", "/studies"),
                             ("GET", "/openapi.json"), ("GET", "/no/such/route"),
                             ("POST", "/dicom-web/studies"), ("DELETE", "/studies/1.2.3"),
                             ("PUT", "/modalities/X"), ("POST", "/tools/find"),
                             ("GET", "/dicom-web/studies/1.2/series/3.4/instances/5.6/rendered"),
                             ("HEAD", "/statistics")]:
            response = client.request(method, path)
            assert response.status_code == 401, (method, path, response.status_code)
            if method != "HEAD":
                assert_challenge(response)


def test_roles_viewer_uploader_admin(server) -> None:
    archive, base = server
    ds = instance("AUTH-ROLES")
    study = ds.StudyInstanceUID
    # viewer: reads, may not store or delete
    with basic_session("vera") as session:
        viewer = dicomweb(base, session)
        assert viewer.search_for_studies(search_filters={"PatientID": "AUTH-ROLES"}) == []
        with pytest.raises(requests.HTTPError) as refused:
            viewer.store_instances([ds])
        assert refused.value.response.status_code == 403
    with httpx.Client(base_url=base, auth=creds("vera"), timeout=10) as client:
        assert client.get("/system").status_code == 200
        assert client.get("/statistics").status_code == 200
        response = client.delete(f"/studies/{study}")
        assert response.status_code == 403
        assert "admin" in response.json()["error"]
        assert client.post("/modalities/X/echo").status_code == 403
        assert client.put("/modalities/X", json={"Host": "h", "Port": 1}).status_code == 403
        found = client.post("/tools/find", json={"Level": "Study", "Query": {}})
        assert found.status_code == 200, found.text
    # uploader: STOW-RS works, deleting does not
    with basic_session("ulla") as session:
        uploader = dicomweb(base, session)
        result = uploader.store_instances([ds])
        assert result.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
        [row] = uploader.search_for_studies(search_filters={"PatientID": "AUTH-ROLES"})
        assert row["0020000D"]["Value"] == [study]
    with httpx.Client(base_url=base, auth=creds("ulla"), timeout=10) as client:
        assert client.delete(f"/studies/{study}").status_code == 403
        assert client.get(f"/studies/{study}").status_code == 200
    # admin: delete
    with httpx.Client(base_url=base, auth=creds("adam"), timeout=10) as client:
        response = client.delete(f"/studies/{study}")
        assert response.status_code == 200, response.text
        assert client.get(f"/studies/{study}").status_code == 404
        rows = client.get("/dicom-web/studies", params={"PatientID": "AUTH-ROLES"})
        assert rows.status_code in (200, 204) and (rows.status_code == 204 or rows.json() == [])
    successes = [e for e in login_events(archive) if e["outcome"] == "success"]
    assert {"vera", "ulla", "adam"} <= {e["user"] for e in successes}


def test_bad_credentials_are_401_and_audited(server) -> None:
    archive, base = server
    garbage = {"Authorization": "Basic !!!not-base64"}
    no_colon = {"Authorization": "Basic " + base64.b64encode(b"vera").decode()}
    with httpx.Client(base_url=base, timeout=10) as client:
        assert_challenge(client.get("/dicom-web/studies", auth=("vera", "wrong")))
        assert_challenge(client.get("/dicom-web/studies", auth=("mallory", "vera-pass")))
        assert_challenge(client.get("/dicom-web/studies", auth=("vera", "")))
        assert_challenge(client.get("/dicom-web/studies", headers=garbage))
        assert_challenge(client.get("/dicom-web/studies", headers=no_colon))
        assert_challenge(client.get("/dicom-web/studies",
                                    headers={"Authorization": "Digest username=vera"}))
    failures = [e for e in login_events(archive) if e["outcome"] == "failure"]
    assert {"vera", "mallory"} <= {e["user"] for e in failures}
    assert all(e["source"].startswith("127.0.0.1:") for e in failures)
    assert len(failures) >= 6
    log_text = json.dumps(read_events(archive.data_dir / "audit"))
    assert "vera-pass" not in log_text and "wrong" not in log_text.replace("wrong user", "")


def test_token_flow(server) -> None:
    archive, base = server
    with httpx.Client(base_url=base, timeout=10) as client:
        assert_challenge(client.post("/auth/token"))
        assert_challenge(client.post("/auth/token", auth=("vera", "nope")))
        response = client.post("/auth/token", auth=creds("vera"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == 8 * 3600
        assert response.headers["Cache-Control"] == "no-store"
        token = body["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert client.get("/statistics", headers=bearer).status_code == 200
        assert client.delete("/studies/1.2.3", headers=bearer).status_code == 403
        head, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["sub"] == "vera" and claims["role"] == "viewer"
        promoted = dict(claims, role="admin", sub="adam")
        forged = base64.urlsafe_b64encode(json.dumps(promoted).encode()).rstrip(b"=").decode()
        flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
        for tampered in (f"{head}.{forged}.{signature}", f"{head}.{payload}.{flipped}",
                         token + "x", "not-a-token"):
            response = client.get("/statistics", headers={"Authorization": f"Bearer {tampered}"})
            assert_challenge(response)
            assert 'error="invalid_token"' in " ".join(response.headers.get_list(
                "www-authenticate"))
        document = client.get("/openapi.json", headers=bearer).json()
        assert set(document["components"]["securitySchemes"]) == {"basic", "bearer"}
        assert "200" in document["paths"]["/auth/token"]["post"]["responses"]
    # dicomweb-client with the bearer token only
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        assert dicomweb(base, session).search_for_studies(
            search_filters={"PatientID": "NOBODY"}) == []
    events = login_events(archive)
    assert any(e["outcome"] == "success" and e["user"] == "vera" and e["method"] == "token"
               for e in events)
    assert any(e["outcome"] == "failure" and e["user"] == "vera" and e["method"] == "token"
               for e in events)
    assert any(e["outcome"] == "failure" and e["method"] == "bearer" for e in events)


def test_removed_user_and_changed_password_are_refused_at_once(server) -> None:
    archive, base = server
    data_dir = archive.data_dir
    add_user(data_dir, "tmpuser", "admin", "first")  # while the server runs
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/statistics", auth=("tmpuser", "first")).status_code == 200
        token = client.post("/auth/token", auth=("tmpuser", "first")).json()["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert client.get("/statistics", headers=bearer).status_code == 200

        proc = pacs_user(data_dir, "passwd", "tmpuser", password="second")
        assert proc.returncode == 0, proc.stderr
        assert_challenge(client.get("/statistics", auth=("tmpuser", "first")))  # cached before
        assert_challenge(client.get("/statistics", headers=bearer))
        assert client.get("/statistics", auth=("tmpuser", "second")).status_code == 200
        token = client.post("/auth/token", auth=("tmpuser", "second")).json()["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}

        proc = pacs_user(data_dir, "role", "tmpuser", "--role", "viewer")
        assert proc.returncode == 0, proc.stderr
        assert client.delete("/studies/1.2.3", headers=bearer).status_code == 403
        assert client.delete("/studies/1.2.3", auth=("tmpuser", "second")).status_code == 403

        proc = pacs_user(data_dir, "remove", "tmpuser")
        assert proc.returncode == 0, proc.stderr
        assert_challenge(client.get("/statistics", auth=("tmpuser", "second")))
        assert_challenge(client.get("/statistics", headers=bearer))
        assert_challenge(client.post("/auth/token", auth=("tmpuser", "second")))
    assert any(e["outcome"] == "failure" and e["user"] == "tmpuser" and e["method"] == "bearer"
               and e["detail"] == "user removed" for e in login_events(archive))
    listing = pacs_user(data_dir, "list")
    assert listing.stdout.split() == ["adam", "admin", "ulla", "uploader", "vera", "viewer"]
    users_file = (data_dir / "state" / "users.json").read_text()
    assert all(password not in users_file for _role, password in USERS.values())


def test_a_burst_of_requests_verifies_the_password_once(server) -> None:
    """A viewer opening a study sends many requests at once: one argon2 check, one login."""
    archive, base = server
    add_user(archive.data_dir, "burst", "viewer", "burst-pass")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=base, auth=("burst", "burst-pass"),
                                     timeout=20) as client:
            responses = await asyncio.gather(*(client.get("/statistics") for _ in range(12)))
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 12
    logins = [e for e in login_events(archive) if e["user"] == "burst"]
    assert [(e["outcome"], e["method"]) for e in logins] == [("success", "basic")]


def test_expired_token_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    add_user(data_dir, "eve", "viewer", "eve-pass")
    archive, base = start(data_dir, {"PACS_TOKEN_LIFETIME": "1"})
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            response = client.post("/auth/token", auth=("eve", "eve-pass"))
            assert response.status_code == 200, response.text
            assert response.json()["expires_in"] == 1
            token = response.json()["access_token"]
            payload = token.split(".")[1]
            expiry = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))[
                "exp"]
            while time.time() < expiry + 0.2:
                time.sleep(0.1)
            response = client.get("/statistics", headers={"Authorization": f"Bearer {token}"})
            assert_challenge(response)
            assert "expired" in response.json()["error"]
        events = login_events(archive)
        assert any(e["outcome"] == "failure" and e.get("detail") == "token expired"
                   and e["user"] == "eve" for e in events)
    finally:
        archive.stop()


def test_tokens_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    add_user(data_dir, "rita", "viewer", "rita-pass")
    archive, base = start(data_dir)
    try:
        token = httpx.post(f"{base}/auth/token", auth=("rita", "rita-pass"),
                           timeout=10).json()["access_token"]
    finally:
        archive.stop()
    secret = data_dir / "state" / "token-secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    archive, base = start(data_dir)
    try:
        response = httpx.get(f"{base}/statistics", headers={"Authorization": f"Bearer {token}"},
                             timeout=10)
        assert response.status_code == 200, response.text
    finally:
        archive.stop()


def test_viewer_in_a_browser_answers_the_basic_challenge(server) -> None:
    """Chromium prompts (Playwright answers as the user would), then the viewer's QIDO fetches
    and rendered images carry the credentials by themselves; without them, the page is 401."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is not installed (make test installs Debian's chromium)")
    _archive, base = server
    study = make_ct().StudyInstanceUID
    datasets = []
    for number in (1, 2):
        ds = instance("AUTH-VIEW")
        ds.StudyInstanceUID = study
        ds.InstanceNumber = number
        datasets.append(ds)
    datasets[1].SeriesInstanceUID = datasets[0].SeriesInstanceUID
    with basic_session("ulla") as session:
        dicomweb(base, session).store_instances(datasets)
    url = f"{base}/viewer?StudyInstanceUID={study}"
    statuses: list[tuple[int, str]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--headless=new", "--no-sandbox", "--disable-gpu"])
        try:
            # Without credentials to give, Playwright cancels the prompt: Chromium shows the
            # 401 page or fails the navigation for want of credentials.
            anonymous = browser.new_context()
            try:
                response = anonymous.new_page().goto(url, timeout=TIMEOUT_MS)
                assert response is not None and response.status == 401
            except PlaywrightError as exc:
                assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
            anonymous.close()

            context = browser.new_context(http_credentials={"username": "vera",
                                                            "password": USERS["vera"][1]})
            page = context.new_page()
            page.on("response", lambda r: statuses.append((r.status, r.url)))
            response = page.goto(url, timeout=TIMEOUT_MS)
            assert response is not None and response.status == 200
            page.wait_for_function("() => document.getElementById('info').textContent"
                                   " === 'slice 1 / 2'", timeout=TIMEOUT_MS)
            page.wait_for_function("() => document.getElementById('view').width === "
                                   f"{datasets[0].Columns}", timeout=TIMEOUT_MS)
            context.close()
        finally:
            browser.close()
    served = [(status, u) for status, u in statuses if not u.endswith("/favicon.ico")]
    assert any("/series/" in u and status == 200 for status, u in served), served
    assert any(u.endswith("/rendered") and status == 200 for status, u in served), served
