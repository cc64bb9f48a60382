"""The agent's log endpoint, its decisions and its file reading: `agent.logaccess`, `agent.logserver`.

Covers: the query refused for each bad parameter (missing or non-DNS namespace and app, a
path in the revision, a tail out of range or not a number, a follow that is not a boolean);
the bearer token read from the Authorization header; the TokenReview and the
SubjectAccessReview built as a kubelet builds them for pods/log (the user's groups, uid and
extra carried over, the HostRelease `<app>-<node>` as the name); their answers read; the 403
text; the tail of a file (all, N, zero, a partial last line held back); following a file
across rotation; the certificate made once and kept, its digest stable.
"""

from __future__ import annotations

import hashlib
import ssl

from pathlib import Path

import pytest

from apprelease.agent import logaccess, logserver

pytestmark = pytest.mark.unit

OK = {"namespace": "shop", "app": "webxample"}

QUERIES = [
    pytest.param({}, "namespace is required", id="nothing"),
    pytest.param({"namespace": "shop"}, "app is required", id="no-app"),
    pytest.param({**OK, "namespace": "Shop_1"}, "namespace: 'Shop_1' is not allowed", id="namespace-not-a-label"),
    pytest.param({**OK, "app": "../etc"}, "app: '../etc' is not allowed", id="app-with-a-path"),
    pytest.param({**OK, "revision": "r1/../../x"}, "revision:", id="revision-with-a-path"),
    pytest.param({**OK, "tail": "ten"}, "tail: 'ten' is not an integer", id="tail-not-a-number"),
    pytest.param({**OK, "tail": "-2"}, "tail must be -1 (all) or 0..", id="tail-below-minus-one"),
    pytest.param({**OK, "tail": "100001"}, "tail must be", id="tail-too-large"),
    pytest.param({**OK, "follow": "yes"}, "follow must be true or false", id="follow-not-boolean"),
    pytest.param({**OK, "process": "../x"}, "process: '../x' is not 'release'", id="process-with-a-path"),
    pytest.param({**OK, "process": "worker"}, "process: 'worker' is not", id="process-without-replica"),
    pytest.param({**OK, "process": "worker-0/../../y"}, "process:", id="process-replica-with-a-path"),
]


@pytest.mark.parametrize(("params", "error"), QUERIES)
def test_bad_queries_are_refused(params, error):
    with pytest.raises(logaccess.BadRequest, match=error.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        logaccess.parse_query(params)


def test_a_good_query():
    query = logaccess.parse_query({**OK, "revision": "r0123456789a", "tail": "10", "follow": "true"})
    assert (query.namespace, query.app, query.revision, query.tail, query.follow) == (
        "shop", "webxample", "r0123456789a", 10, True)
    assert query.for_node("host-a") == "webxample-host-a"
    assert logaccess.parse_query(OK).tail == -1 and not logaccess.parse_query(OK).follow
    assert logaccess.parse_query(OK).process is None


@pytest.mark.parametrize(("process", "names"), [
    (None, ["r1.stderr.log", "r1.stdout.log"]),
    ("release", ["r1.release.log"]),
    ("worker-3", ["r1.worker-3.stderr.log", "r1.worker-3.stdout.log"]),
])
def test_a_process_reads_its_own_files_under_the_app_logs(process, names):
    from apprelease.agent.logserver import log_files
    from apprelease.host.layout import AppPaths

    paths = AppPaths(Path("/root/apps/shop_webxample"))
    query = logaccess.parse_query({**OK, **({"process": process} if process else {})})
    files = log_files(paths, "r1", query.process)
    assert [f.name for f in files] == names and all(f.parent == paths.logs for f in files)


@pytest.mark.parametrize(("header", "token"), [("Bearer abc", "abc"), ("bearer abc", "abc"), ("Basic abc", None),
                                               ("Bearer ", None), (None, None)], ids=str)
def test_bearer_token(header, token):
    assert logaccess.bearer_token(header) == token


def test_reviews_ask_what_a_kubelet_asks():
    review = {"status": {"authenticated": True, "user": {
        "username": "system:serviceaccount:shop:reader", "uid": "u-1", "groups": ["system:serviceaccounts"],
        "extra": {"authentication.kubernetes.io/node-name": ["n1"]}}}}
    user = logaccess.authenticated_user(review)
    assert user is not None and user.name == "system:serviceaccount:shop:reader"
    sar = logaccess.access_review(user, "shop", "webxample-host-a")
    assert sar["spec"]["resourceAttributes"] == {
        "group": "apprelease.dev", "resource": "hostreleases", "subresource": "log", "verb": "get",
        "namespace": "shop", "name": "webxample-host-a"}
    assert sar["spec"]["groups"] == ["system:serviceaccounts"] and sar["spec"]["uid"] == "u-1"
    assert sar["spec"]["extra"] == {"authentication.kubernetes.io/node-name": ["n1"]}
    assert logaccess.token_review("t")["spec"] == {"token": "t"}
    assert logaccess.authenticated_user({"status": {"authenticated": False, "error": "bad"}}) is None
    assert logaccess.allowed({"status": {"allowed": True}}) == (True, "")
    assert logaccess.allowed({"status": {"allowed": False, "reason": "no RBAC"}}) == (False, "no RBAC")
    assert 'cannot get resource "hostreleases/log"' in logaccess.refusal(user, "shop", "webxample-a", "")


@pytest.mark.parametrize(("content", "count", "want"), [
    (b"a\nb\nc\n", -1, [b"a\n", b"b\n", b"c\n"]),
    (b"a\nb\nc\n", 2, [b"b\n", b"c\n"]),
    (b"a\nb\nc\n", 0, []),
    (b"a\nb\npart", -1, [b"a\n", b"b\n"]),
    (b"", 5, []),
], ids=["all", "last-two", "none", "partial-line-held-back", "empty"])
def test_tail_lines(tmp_path, content, count, want):
    path = tmp_path / "r1.stderr.log"
    path.write_bytes(content)
    lines, _, offset = logserver.tail_lines(path, count)
    assert lines == want
    assert offset == len(content) - (len(content.rsplit(b"\n", 1)[-1]) if not content.endswith(b"\n") else 0)


def test_follow_across_rotation(tmp_path):
    path = tmp_path / "r1.stdout.log"
    path.write_bytes(b"old\n")
    _, inode, offset = logserver.tail_lines(path, -1)
    follower = logserver.Follower(path, inode, offset)
    assert follower.read() == []
    with path.open("ab") as f:
        f.write(b"one\ntw")
    assert follower.read() == [b"one\n"]
    with path.open("ab") as f:
        f.write(b"o\n")
    assert follower.read() == [b"two\n"]
    path.rename(tmp_path / "r1.stdout.log.1")  # the supervisor rotates: a new file from its start
    path.write_bytes(b"fresh\n")
    assert follower.read() == [b"fresh\n"]
    assert logserver.Follower(tmp_path / "missing.log", 0, 0).read() == []


def test_certificate_is_made_once_and_kept(tmp_path):
    cert, key, digest = logserver.ensure_certificate(tmp_path / "tls", "host-a", "127.0.0.1")
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700 and key.stat().st_mode & 0o777 == 0o600
    assert digest == hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()
    assert logserver.ensure_certificate(tmp_path / "tls", "host-a", "127.0.0.1")[2] == digest
