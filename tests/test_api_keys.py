"""API keys for ``imageclf serve`` (issue 29): the key file, the door, quotas.

Through Flask's test client first (every hostile header, the page, metrics, the OpenAPI
document), then on a real two-worker gunicorn server: quotas shared between workers
(requests pinned to each worker through /proc), Basic auth on the page, long and
non-ASCII headers as raw bytes, per-key metrics summed over workers, the access log.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import multiprocessing
import os
import re
import socket
import stat
import time
from pathlib import Path

import pytest
from helpers import make_tiny_bundle, png_bytes
from realserver import serving

from imageclf.cli import main
from imageclf.errors import UserInputError
from imageclf.web import DEFAULTS, create_app, keys
from imageclf.web.keys import KeyRing, add_key, parse_key_file, parse_rate
from imageclf.web.openapi import build_spec
from imageclf.web.quota import Quota, SharedBuckets

ALICE = "alice-" + "a" * 37  # any token68 string works as a key; generated ones are 43 chars
BOB = "bob-key-with-a-quota"


def line(name: str, key: str, extra: str = "") -> str:
    return f"{name}:{hashlib.sha256(key.encode()).hexdigest()} {extra}".rstrip()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("keys") / "tiny.safetensors")


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keyfile") / "keys.txt"
    # bob: two requests, then one token per 1000 s (never within a test)
    text = f"# team keys\n{line('alice', ALICE)}\n\n{line('bob', BOB, 'rate=0.001 burst=2')}\n"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def app(bundle, key_file):
    return create_app(
        bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager", IMAGECLF_API_KEYS=str(key_file)
    )


@pytest.fixture(scope="module")
def guarded_app(bundle, key_file):
    return create_app(
        bundle,
        TESTING=True,
        IMAGECLF_MODEL_LOADING="eager",
        IMAGECLF_API_KEYS=str(key_file),
        IMAGECLF_PROTECT_PAGE=True,
        IMAGECLF_PROTECT_METRICS=True,
    )


def error_of(response) -> dict:
    assert response.mimetype == "application/json", response.get_data(as_text=True)[:200]
    return response.get_json()["error"]


# ---------------------------------------------------------------- the API
def test_api_needs_a_key(app):
    client = app.test_client()
    for path in ("/api/v1/model", "/api/v1/openapi.json", "/api/v1/nothing-here"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="imageclf"'
        error = error_of(response)
        assert error["status"] == 401 and "Authorization: Bearer KEY" in error["message"]
        assert error["request_id"] == response.headers["X-Request-ID"]
        assert "Connection" not in response.headers  # no body: the connection is kept
    response = client.post("/api/v1/predict", data={"file": (io.BytesIO(png_bytes()), "x.png")})
    assert response.status_code == 401 and response.headers["Connection"] == "close"
    assert client.get("/api/v1/predict").status_code == 401  # before routing's 405
    assert client.get("//api/v1/model").status_code != 200  # a redirect to the guarded path


def test_a_valid_key_opens_the_api(app):
    client = app.test_client()
    assert client.get("/api/v1/model", headers=bearer(ALICE)).status_code == 200
    response = client.post(
        "/api/v1/predict",
        data={"file": (io.BytesIO(png_bytes()), "x.png")},
        headers=bearer(ALICE),
    )
    assert response.status_code == 200 and len(response.get_json()["predictions"]) == 1


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"bearer {ALICE}", id="lowercase scheme"),
        pytest.param(f"BEARER {ALICE}", id="uppercase scheme"),
        pytest.param(f"Bearer    {ALICE}", id="several spaces"),
        pytest.param(f"  Bearer {ALICE}  ", id="surrounding spaces"),
        pytest.param(basic("anyone", ALICE), id="basic, key as password"),
        pytest.param(basic("", ALICE), id="basic, no user name"),
    ],
)
def test_what_rfc_7235_allows_is_accepted(app, header):
    """The scheme is case-insensitive and 1*SP separates it from the key (RFC 7235)."""
    response = app.test_client().get("/api/v1/model", headers={"Authorization": header})
    assert response.status_code == 200


HOSTILE = [
    pytest.param(ALICE, "Bearer", id="no scheme"),
    pytest.param("Bearer", "Bearer", id="scheme only"),
    pytest.param("Bearer ", "Bearer", id="empty key"),
    pytest.param('Bearer ""', "Bearer", id="quoted empty key"),
    pytest.param(f"Token {ALICE}", "Bearer", id="unknown scheme"),
    pytest.param(f"Bearer {ALICE} extra", "Bearer", id="two tokens"),
    pytest.param(f"Bearer\t{ALICE}", "Bearer", id="tab"),
    pytest.param(f"Bearer {ALICE[:-1]}", "Bearer", id="wrong key (one character short)"),
    pytest.param(f"Bearer {ALICE}x", "Bearer", id="wrong key (one character more)"),
    pytest.param(f"Bearer {hashlib.sha256(ALICE.encode()).hexdigest()}", "Bearer", id="hash"),
    pytest.param("Bearer " + "k" * 300, "Bearer", id="key over 256 characters"),
    pytest.param("Bearer " + "k" * 5000, "Bearer", id="header over 1024 characters"),
    pytest.param("Bearer " + "k" * 200_000, "Bearer", id="200 KB header"),
    pytest.param("Bearer caf\xe9\xff", "Bearer", id="non-ASCII bytes"),
    pytest.param("Bearer \u0101\u20ac", "Bearer", id="characters beyond latin-1"),
    pytest.param("Basic !!!!", "Bearer", id="basic, not base64"),
    pytest.param(
        "Basic " + base64.b64encode(ALICE.encode()).decode(), "Bearer", id="basic, no colon"
    ),
    pytest.param(basic("alice", ""), "Bearer", id="basic, empty password"),
    pytest.param(basic(ALICE, "x"), "Bearer", id="basic, key as user name"),
    pytest.param(
        "Basic " + base64.b64encode(b"u:\xff\xfe").decode(), "Bearer", id="basic, not UTF-8"
    ),
    pytest.param("Bearer \x00" + ALICE, "Bearer", id="NUL"),
]


@pytest.mark.parametrize(("header", "scheme"), HOSTILE)
def test_hostile_authorization_headers_get_401_with_json(app, header, scheme):
    # environ_overrides: the header as a WSGI server passes it (latin-1 text), unchecked.
    response = app.test_client().get(
        "/api/v1/model", environ_overrides={"HTTP_AUTHORIZATION": header}
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith(scheme)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    error = error_of(response)
    assert error["status"] == 401 and len(error["message"]) < 200
    assert ALICE not in error["message"] and "\\x" not in error["message"]


def test_an_empty_header_counts_as_none(app):
    response = app.test_client().get("/api/v1/model", headers={"Authorization": "  "})
    assert response.status_code == 401
    assert "error=" not in response.headers["WWW-Authenticate"]


def test_comparison_is_hmac_compare_digest_of_hashes_over_every_key(key_file, monkeypatch):
    """No timing assertion: the comparison itself is checked. Every stored hash is
    compared with hmac.compare_digest against the presented key's SHA-256, never the
    key itself, and a match does not stop the loop early."""
    ring = KeyRing.load(key_file)
    seen: list[tuple[bytes, bytes]] = []
    real = keys.hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    assert ring.identify(ALICE).name == "alice"  # alice is the first of two keys
    assert len(seen) == 2
    digest = hashlib.sha256(ALICE.encode()).digest()
    assert all(a == digest and len(b) == 32 for a, b in seen)
    assert {b for _, b in seen} == {k.digest for k in ring.keys}
    seen.clear()
    assert ring.identify("nobody's key") is None and len(seen) == 2


# ---------------------------------------------------------------- open routes, the page
def test_probes_page_static_and_metrics_stay_open_by_default(app):
    client = app.test_client()
    for path in ("/healthz", "/readyz", "/", "/static/style.css", "/metrics"):
        assert client.get(path).status_code == 200, path
    response = client.post("/predict", data={"file": (io.BytesIO(png_bytes()), "x.png")})
    assert response.status_code == 200


def test_protect_page_asks_a_browser_for_the_key(guarded_app):
    client = guarded_app.test_client()
    response = client.get("/")
    assert response.status_code == 401 and response.mimetype == "text/html"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="imageclf", charset="UTF-8"'
    # a POST without the key gets the error page, not the form (model name, examples)
    response = client.post("/predict", data={"file": (io.BytesIO(png_bytes()), "x.png")})
    html = response.get_data(as_text=True)
    assert response.status_code == 401 and 'id="upload-form"' not in html
    assert "tiny-seed-a" not in html
    # what the browser sends after its prompt: any user, the key as password
    authorization = {"Authorization": basic("me", ALICE)}
    assert client.get("/", headers=authorization).status_code == 200
    response = client.post(
        "/predict",
        data={"file": (io.BytesIO(png_bytes()), "x.png")},
        headers=authorization,
    )
    assert response.status_code == 200 and 'id="label"' in response.get_data(as_text=True)
    for path in ("/healthz", "/readyz", "/static/style.css"):
        assert client.get(path).status_code == 200, path


def test_protect_metrics(guarded_app):
    client = guarded_app.test_client()
    response = client.get("/metrics")
    assert response.status_code == 401 and error_of(response)["status"] == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers=bearer(ALICE)).status_code == 200


def test_protecting_without_keys_is_an_error(bundle):
    with pytest.raises(UserInputError, match="need --api-keys"):
        create_app(bundle, IMAGECLF_MODEL_LOADING="manual", IMAGECLF_PROTECT_PAGE=True)


# ---------------------------------------------------------------- quotas and metrics
def test_quota_429_with_retry_after_and_json(bundle, key_file):
    app = create_app(
        bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager", IMAGECLF_API_KEYS=str(key_file)
    )  # fresh buckets
    client = app.test_client()
    statuses = [
        client.get("/api/v1/openapi.json", headers=bearer(BOB)).status_code for _ in range(4)
    ]
    assert statuses == [200, 200, 429, 429]
    response = client.get("/api/v1/openapi.json", headers=bearer(BOB))
    assert response.status_code == 429
    assert 900 <= int(response.headers["Retry-After"]) <= 1000  # one token per 1000 s
    error = error_of(response)
    assert error["status"] == 429 and "'bob'" in error["message"]
    # alice has no quota, and bob's bucket is not hers
    assert all(
        client.get("/api/v1/openapi.json", headers=bearer(ALICE)).status_code == 200
        for _ in range(5)
    )
    # /metrics is never throttled (monitoring must not go dark with the quota)
    metrics = client.get("/metrics", headers=bearer(BOB)).get_data(as_text=True)
    assert 'imageclf_key_throttled_total{key="bob"} 3.0' in metrics


def test_metrics_count_per_key_name_with_bounded_labels(bundle, key_file):
    app = create_app(
        bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager", IMAGECLF_API_KEYS=str(key_file)
    )
    client = app.test_client()
    client.get("/api/v1/model", headers=bearer(ALICE))
    client.get("/api/v1/model")
    for n in range(20):  # twenty different wrong keys: still one label
        client.get("/api/v1/model", headers=bearer(f"guess{n}"))
    client.get("/healthz", headers=bearer(f"guess{n}"))  # open routes are not counted
    text = client.get("/metrics").get_data(as_text=True)
    counted = dict(
        re.findall(r'imageclf_key_requests_total\{(key="[^"]*",status="[^"]*")\} (\S+)', text)
    )
    assert counted == {
        'key="alice",status="2xx"': "1.0",
        'key="anonymous",status="4xx"': "1.0",
        'key="invalid",status="4xx"': "20.0",
    }
    assert "guess" not in text


def test_token_bucket_refills_at_its_rate():
    buckets = SharedBuckets(2)
    quota = Quota(rate=2.0, burst=3)
    assert [buckets.take(0, quota, now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take(0, quota, now=100.0) == pytest.approx(0.5)  # half a second to a token
    assert buckets.take(0, quota, now=100.5) == 0.0
    assert buckets.take(1, quota, now=100.5) == 0.0  # another slot, its own bucket
    assert [buckets.take(0, quota, now=200.0) for _ in range(4)][-1] > 0  # refills to burst only


def _take_in_child(buckets: SharedBuckets, count: int, queue) -> None:
    queue.put([buckets.take(0, Quota(rate=1e-6, burst=5), now=1.0) for _ in range(count)])


def test_buckets_are_shared_with_forked_processes():
    """What gunicorn's workers do: fork after the buckets exist, then spend from them."""
    buckets = SharedBuckets(1)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_take_in_child, args=(buckets, 3, queue))
    child.start()
    assert queue.get(timeout=60) == [0.0, 0.0, 0.0]
    child.join(60)
    waits = [buckets.take(0, Quota(rate=1e-6, burst=5), now=1.0) for _ in range(3)]
    assert waits[:2] == [0.0, 0.0] and waits[2] > 0  # 3 + 2 = burst: the child's were spent


# ---------------------------------------------------------------- the key file
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "line 1: expected NAME:SHA256"),
        ("alice:abc", "line 1: the hash must be 64"),
        (f"alice:{'A' * 64}", "lowercase hex"),
        (f"anonymous:{'a' * 64}", "not anonymous or invalid"),
        (f"al ice:{'a' * 64}", "expected NAME:SHA256"),
        (f"x:{'a' * 64}\ny:{'b' * 64} rate=fast", "line 2: a rate must be"),
        (f"x:{'a' * 64} rate=0", "a rate must be"),
        (f"x:{'a' * 64} rate=1e999", "a rate must be"),
        (f"x:{'a' * 64} burst=3", "burst=N needs a rate"),
        (f"x:{'a' * 64} rate=1 burst=0", "at least 1"),
        (f"x:{'a' * 64} rate=1 burst=x", "burst must be a whole number"),
        (f"x:{'a' * 64} color=red", "expected rate=RATE or burst=N"),
        (f"x:{'a' * 64}\nx:{'b' * 64}", "line 2: the same name"),
        (f"x:{'a' * 64}\ny:{'a' * 64}", "line 2: the same key"),
        ("# only a comment\n", "holds no key"),
    ],
)
def test_bad_key_files_are_one_clear_error(tmp_path, text, message):
    path = tmp_path / "keys.txt"
    path.write_text(text)
    with pytest.raises(UserInputError, match=re.escape(message)):
        KeyRing.load(path)


def test_key_file_limits(tmp_path):
    assert not tmp_path.joinpath("missing").exists()
    with pytest.raises(UserInputError, match="no such file"):
        KeyRing.load(tmp_path / "missing")
    with pytest.raises(UserInputError, match="folder"):
        KeyRing.load(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UserInputError, match="named pipe"):  # refused, not waited on
        KeyRing.load(fifo)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" * 10)
    with pytest.raises(UserInputError, match="not UTF-8"):
        KeyRing.load(binary)
    many = "\n".join(f"k{i}:{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(1001))
    with pytest.raises(UserInputError, match="at most 1000"):
        parse_key_file(many, "keys")


def test_rates_and_defaults():
    assert parse_rate("5") == parse_rate("5/s") == parse_rate("300/min") == parse_rate("18000/h")
    assert parse_rate("none") is None
    default = Quota(rate=1.0, burst=4)
    digest = "a" * 64
    text = f"a:{digest}\nb:{'b' * 64} rate=10/min\nc:{'c' * 64} rate=none\nd:{'d' * 64} burst=9"
    found = {k.name: k.quota for k in parse_key_file(text, "keys", default)}
    assert found == {
        "a": default,  # the flags' quota
        "b": Quota(rate=10 / 60, burst=1),  # its own rate; burst: a second's worth, at least 1
        "c": None,  # unlimited, e.g. a scraper's key
        "d": Quota(rate=1.0, burst=9),
    }


# ---------------------------------------------------------------- the CLI
def test_keys_add_makes_a_key_the_server_accepts(tmp_path, capsys, bundle):
    path = tmp_path / "keys.txt"
    assert main_code(["serve", "keys", "add", "ci-bot", "--file", str(path)]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key) and "only time" in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == line("ci-bot", key) + "\n"
    assert main_code(["serve", "keys", "add", "bob", "--file", str(path), "--rate", "60/min"]) == 0
    second = capsys.readouterr().out.strip()
    ring = KeyRing.load(path)
    assert ring.identify(key).name == "ci-bot" and ring.identify(second).quota.rate == 1.0
    # the hand-made entry of docs/limits.md: NAME:$(printf %s "$KEY" | sha256sum)
    with path.open("a") as handle:
        handle.write(f"carl:{hashlib.sha256(b'my-own-key').hexdigest()}\n")
    app = create_app(
        bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager", IMAGECLF_API_KEYS=str(path)
    )
    for k in (key, second, "my-own-key"):
        assert app.test_client().get("/api/v1/model", headers=bearer(k)).status_code == 200


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["keys", "add", "ci-bot"], "already has a key named 'ci-bot'"),
        (["keys", "add", "bad name"], "a key name is"),
        (["keys", "add", "invalid"], "a key name is"),
        (["keys", "add", "x", "--rate", "fast"], "a rate must be"),
        (["keys", "add", "x", "--burst", "3"], "burst=N needs a rate"),
    ],
)
def test_keys_add_refuses_bad_input(tmp_path, capsys, argv, message):
    path = tmp_path / "keys.txt"
    add_key(path, "ci-bot")
    before = path.read_text()
    assert main_code(["serve", *argv, "--file", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert path.read_text() == before  # nothing appended


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--protect-page"], "need --api-keys"),
        (["--protect-metrics"], "need --api-keys"),
        (["--key-rate", "5"], "need --api-keys"),
        (["--api-keys", "/nonexistent/keys.txt"], "no such file"),
        (["--api-keys", "{bad}"], "line 1: expected NAME:SHA256"),
        (["--api-keys", "{good}", "--key-rate", "lots"], "a rate must be"),
    ],
)
def test_serve_refuses_bad_key_settings_before_starting(tmp_path, capsys, argv, message):
    bad, good = tmp_path / "bad.txt", tmp_path / "good.txt"
    bad.write_text("not a key line\n")
    good.write_text(line("alice", ALICE) + "\n")
    argv = [a.format(bad=bad, good=good) for a in argv]
    assert main_code(["serve", "--port", "0", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imageclf: error:") and message in err and "\n" not in err


def main_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


# ---------------------------------------------------------------- the OpenAPI document
def test_openapi_describes_the_keys(app):
    response = app.test_client().get("/api/v1/openapi.json", headers=bearer(ALICE))
    spec = response.get_json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["basic"]["scheme"] == "basic"
    assert spec["security"] == [{"bearer": []}, {"basic": []}]
    predict = spec["paths"]["/api/v1/predict"]["post"]["responses"]
    assert predict["401"] == {"$ref": "#/components/responses/Unauthorized"}
    assert predict["429"] == {"$ref": "#/components/responses/TooManyRequests"}
    responses = spec["components"]["responses"]
    assert "Retry-After" in responses["TooManyRequests"]["headers"]
    assert "WWW-Authenticate" in responses["Unauthorized"]["headers"]
    for path in ("/healthz", "/readyz", "/metrics"):  # open unless protected
        assert spec["paths"][path]["get"]["security"] == []
    # the 401 body is what the document says
    import jsonschema_rs

    schema = {**spec["components"]["schemas"]["Error"], "components": spec["components"]}
    refused = app.test_client().get("/api/v1/model")
    jsonschema_rs.validate(schema, refused.get_json())


def test_openapi_metrics_guarded_only_when_protected(guarded_app):
    spec = build_spec(guarded_app.config)
    assert "security" not in spec["paths"]["/metrics"]["get"]
    assert "401" in spec["paths"]["/metrics"]["get"]["responses"]
    assert "429" not in spec["paths"]["/metrics"]["get"]["responses"]


def test_openapi_without_keys_says_nothing_of_them():
    spec = build_spec(DEFAULTS)
    assert "security" not in spec and "securitySchemes" not in spec["components"]
    assert "401" not in spec["paths"]["/api/v1/predict"]["post"]["responses"]


# ---------------------------------------------------------------- the real server
CAROL = "carol-key-for-the-real-server"


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundle):
    folder = tmp_path_factory.mktemp("keys-serve")
    key_file = folder / "keys.txt"
    key_file.write_text(f"{line('alice', ALICE)}\n{line('carol', CAROL, 'rate=0.001 burst=6')}\n")
    env = {
        "IMAGECLF_API_KEYS_FILE": str(key_file),
        "IMAGECLF_PROTECT_PAGE": "1",
        "IMAGECLF_PROTECT_METRICS": "1",
        "IMAGECLF_ACCESS_LOG": "1",
        "IMAGECLF_MAX_REQUESTS": "0",  # the same two workers throughout
    }
    with serving(bundle, folder, workers=2, env=env) as running:
        yield running


def raw_request(port: int, head: bytes) -> bytes:
    """Bytes as they are (no client library checks them); the answer's status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def server_side_pid(server, connection) -> int | None:
    """The worker holding the server side of ``connection``: its socket's inode from
    /proc/net/tcp, found among each worker's file descriptors."""
    client_port = connection.sock.getsockname()[1]
    wanted = f"0100007F:{server.port:04X}", f"0100007F:{client_port:04X}"
    inode = None
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if (fields[1], fields[2]) == wanted:
            inode = fields[9]
    for pid in server.worker_pids():
        folder = Path(f"/proc/{pid}/fd")
        for fd in folder.iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def connection_per_worker(server) -> dict[int, object]:
    """A kept-alive connection held by each worker (new ones until both are covered).
    An idle worker may take every accept for a while (seen in CI: 40 in a row), so this
    keeps trying, a little apart, for up to 30 s."""
    found: dict[int, http.client.HTTPConnection] = {}
    spare = []
    deadline = time.monotonic() + 30
    while len(found) < 2 and time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", "/healthz")
        connection.getresponse().read()
        pid = server_side_pid(server, connection)
        if pid is None or pid in found:
            spare.append(connection)
            time.sleep(0.05)
        else:
            found[pid] = connection
    for connection in spare:
        connection.close()
    assert len(found) == 2, "could not reach both workers"
    return found


def test_real_server_quota_is_shared_by_the_workers(server):
    """Six requests in all for carol, alternating between the two workers: with a bucket
    per worker, twelve would pass."""
    connections = connection_per_worker(server)
    passed: dict[int, int] = dict.fromkeys(connections, 0)
    statuses = []
    for _ in range(6):
        for pid, connection in connections.items():
            connection.request("GET", "/api/v1/model", headers=bearer(CAROL))
            response = connection.getresponse()
            body = response.read()
            statuses.append(response.status)
            if response.status == 200:
                passed[pid] += 1
            else:
                assert response.status == 429 and int(response.getheader("Retry-After")) > 0
                assert json.loads(body)["error"]["status"] == 429  # the connection stays
    assert statuses.count(200) == 6 and statuses.count(429) == 6
    assert all(passed.values()), passed  # both workers spent from the one bucket
    for connection in connections.values():
        connection.close()
    # the counts of both workers, summed by whichever worker answers the scrape
    _, _, text = server.request("GET", "/metrics", headers=bearer(ALICE))
    text = text.decode()
    assert 'imageclf_key_requests_total{key="carol",status="2xx"} 6.0' in text
    assert 'imageclf_key_throttled_total{key="carol"} 6.0' in text


def test_real_server_refusals(server):
    status, headers, body = server.request("GET", "/api/v1/model")
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="imageclf"'
    assert json.loads(body)["error"]["status"] == 401
    assert server.request("GET", "/api/v1/model", headers=bearer(ALICE))[0] == 200
    # a refused upload is read (bounded) so the client gets the 401, not a reset
    upload = b"x" * (1024 * 1024)
    head = (
        "POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(upload)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + upload)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert answer.status == 401 and json.loads(answer.read())["error"]["status"] == 401
    # probes stay open, /metrics and the page do not
    assert server.request("GET", "/healthz")[0] == 200
    assert server.request("GET", "/readyz")[0] == 200
    assert server.request("GET", "/metrics")[0] == 401
    status, headers, _ = server.request("GET", "/")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert server.request("GET", "/", headers={"Authorization": basic("me", ALICE)})[0] == 200


@pytest.mark.parametrize(
    ("value", "statuses"),
    [
        (b"Bearer " + b"k" * 2000, (b"401",)),  # ours: over 1024 characters
        (b"Bearer " + b"k" * 20_000, (b"400", b"431")),  # gunicorn's own header limit
        (b"Bearer caf\xc3\xa9\xff\xfe", (b"401",)),  # non-ASCII bytes
        (b"bearer " + ALICE.encode(), (b"200",)),
    ],
    ids=["2 KB", "20 KB", "non-ASCII", "lowercase"],
)
def test_real_server_raw_headers(server, value, statuses):
    head = b"GET /api/v1/model HTTP/1.1\r\nHost: x\r\nAuthorization: " + value
    status_line = raw_request(server.port, head + b"\r\nConnection: close\r\n\r\n")
    assert status_line.split(b" ")[1] in statuses, status_line


def test_real_server_access_log_names_the_key(server):
    server.request("GET", "/api/v1/openapi.json", headers=bearer(ALICE))
    server.request("GET", "/api/v1/openapi.json", headers=bearer("not-a-key"))
    text = server.text()
    assert re.search(r'127\.0\.0\.1 - alice \[.*"GET /api/v1/openapi.json HTTP/1.1" 200', text)
    assert re.search(r'127\.0\.0\.1 - invalid \[.*"GET /api/v1/openapi.json HTTP/1.1" 401', text)
    assert "not-a-key" not in text
    assert_no_server_errors(text)


def assert_no_server_errors(text: str) -> None:
    assert "Traceback" not in text and '" 500 ' not in text
