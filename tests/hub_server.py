"""A strict local stand-in for the Hugging Face Hub: the part of its HTTP API that `huggingface_hub` 2.x uses to
create a repo, push a folder and download it again, on 127.0.0.1 (standard library only).

    with LocalHub() as hub:                      # or the `local_hub` fixture in test_hub.py
        HfApi(endpoint=hub.url, token=hub.token).upload_folder(...)
        hub.commits("tester/repo")[-1].lfs_paths  # what the server stored

Routes (`{type}s` is models / datasets / spaces; a repo id is always `namespace/name`):
    POST /api/repos/create                          -> {"url"}; 409 when the repo exists (the client's exist_ok)
    POST /api/validate-yaml                         README.md metadata, checked before a commit
    POST /api/{type}s/{repo}/preupload/{rev}        "regular" or "lfs" per file (never Xet)
    POST /{repo}.git/info/lfs/objects/batch         LFS batch API: upload + verify actions pointing back here
    PUT  /lfs-upload/{ticket}                       the object itself; size and sha256 are checked
    POST /lfs-verify/{ticket}                       LFS verify
    POST /api/{type}s/{repo}/commit/{rev}           NDJSON: header, file (base64), lfsFile, deletedFile/Folder
    POST /api/{type}s/{repo}/branch/{branch}        create_branch
    GET  /api/{type}s/{repo}[/revision/{rev}]       model info: sha, siblings (sizes and LFS with ?blobs=true)
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]    tree listing (?recursive=true)
    POST /api/{type}s/{repo}/paths-info/{rev}       info on given paths
    GET|HEAD /{repo}/resolve/{rev}/{path}           file content with X-Repo-Commit, ETag, X-Linked-Etag /
                                                    X-Linked-Size (LFS), Content-Length; errors carry X-Error-Code
                                                    RepoNotFound / RevisionNotFound / EntryNotFound
    GET  /api/whoami-v2                             the token's user
    GET  /api/agent-harnesses                       an empty registry (the client's user-agent telemetry)

Strictness: writes (and reads of private repos) need `Authorization: Bearer <token>` with a known token whose user
owns the namespace; uploaded LFS objects must match the announced size and sha256; a commit naming an LFS object
that was never uploaded (and verified) to that repo is refused with 400 and changes nothing; a commit is applied
whole or not at all. Every request is recorded in `hub.requests` (method, path, status; never headers, so never a
token), requests no route answers in `hub.unhandled`.

Xet. huggingface_hub 2.x decides to use Xet on the client side alone: `is_xet_available()` is true when the
`hf_xet` package is installed and `HF_HUB_DISABLE_XET` is not set, and then every file the preupload answer marks
"lfs" goes through Xet storage (a token from `/api/{type}s/{repo}/xet-write-token/{rev}`, then a CAS server); no
response header or batch `transfer` field negotiates it. This server never advertises Xet (no `X-Xet-*` headers, no
"xet" transfer) and answers the Xet token route with 501, recorded in `hub.xet_requests`. So a test runs the
default client (hf_xet installed) against `upload_mode="regular"` (every file committed inline as base64) and the
legacy LFS protocol with `HF_HUB_DISABLE_XET=1` against `upload_mode="lfs"` (the default).

Faults: `hub.drop_connection(method, path_regex, times=1)` makes the next matching request(s) read part of the body
and close the socket without an answer, as a connection lost mid-upload.
"""

import base64
import fnmatch
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


DEFAULT_TOKEN = "hf_local_test_write_token_0123456789"
DEFAULT_USER = "tester"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# The patterns of the .gitattributes the Hub writes into a new repo, and its size limit for regular files.
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst",
    "*tfevents*",
)  # fmt: skip
MAX_REGULAR_SIZE = 10 * 1024 * 1024
# Pipeline tags the Hub knows that a vision-language encoder could carry (validate-yaml refuses others).
PIPELINE_TAGS = {
    "feature-extraction", "image-feature-extraction", "zero-shot-image-classification", "visual-question-answering",
    "image-text-to-text", "image-to-text", "fill-mask", "image-classification", "text-classification",
    "document-question-answering", "sentence-similarity", "text-generation", "text-to-image",
}  # fmt: skip


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **body):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, self.size)

    @property
    def git_oid(self) -> str:
        """The git object id: of the content for a regular file, of the pointer file for an LFS file."""
        return git_blob_oid(self.pointer if self.lfs else self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    description: str
    files: dict[str, Blob]  # the whole tree after the commit
    added: dict[str, str] = field(default_factory=dict)  # path -> "regular" | "lfs", as sent in the commit
    deleted: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    @property
    def lfs_paths(self) -> set[str]:
        return {path for path, mode in self.added.items() if mode == "lfs"}

    @property
    def regular_paths(self) -> set[str]:
        return {path for path, mode in self.added.items() if mode == "regular"}


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)  # commit oids in creation order
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # verified uploads: sha256 -> content

    def resolve(self, revision: str) -> Commit:
        oid = self.branches.get(revision, revision)
        if oid not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int


class LocalHub:
    """The server and what it stores. `tokens` maps a bearer token to its user; `orgs` a user to the extra
    namespaces it may write to. `require_token=False` accepts anonymous writes (into `anonymous_user`'s
    namespace). `upload_mode`: "lfs" answers preupload like the Hub (LFS for the .gitattributes patterns and
    files over 10 MiB), "regular" puts every file inline in the commit."""

    def __init__(
        self,
        tokens: dict[str, str] | None = None,
        orgs: dict[str, list[str]] | None = None,
        require_token: bool = True,
        upload_mode: str = "lfs",
        anonymous_user: str = DEFAULT_USER,
    ):
        if upload_mode not in ("lfs", "regular"):
            raise ValueError(f"upload_mode must be 'lfs' or 'regular', got {upload_mode!r}.")
        self.tokens = {DEFAULT_TOKEN: DEFAULT_USER} if tokens is None else dict(tokens)
        self.orgs = orgs or {}
        self.require_token = require_token
        self.upload_mode = upload_mode
        self.anonymous_user = anonymous_user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[RequestRecord] = []
        self.unhandled: list[str] = []
        self.xet_requests: list[str] = []
        self.dropped: list[str] = []
        self._faults: list[list] = []  # [method, compiled regex, remaining]
        self._tickets: dict[str, tuple[str, str, str, int]] = {}  # ticket -> (kind, repo key, oid, size)
        self._pending: dict[tuple[tuple[str, str], str], bytes] = {}  # uploaded, not yet verified
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------------------------
    # Life cycle and test helpers
    # ----------------------------------------------------------------------------------------------------------

    @property
    def token(self) -> str:
        return next(iter(self.tokens))

    @property
    def user(self) -> str:
        return self.tokens[self.token]

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LocalHub":
        handler = type("BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-hub", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def drop_connection(self, method: str, path_regex: str, times: int = 1) -> None:
        """Make the next `times` requests whose method and path match read half their body and close the socket
        without answering."""
        with self._lock:
            self._faults.append([method.upper(), re.compile(path_regex), times])

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def commits(self, repo_id: str, repo_type: str = "model") -> list[Commit]:
        """Every commit of the repo, oldest first (the first is the repo creation's .gitattributes)."""
        repo = self.repo(repo_id, repo_type)
        return [repo.commits[oid] for oid in repo.history]

    def file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        return self.repo(repo_id, repo_type).resolve(revision).files[path].data

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, Blob]:
        return dict(self.repo(repo_id, repo_type).resolve(revision).files)

    # ----------------------------------------------------------------------------------------------------------
    # Authentication
    # ----------------------------------------------------------------------------------------------------------

    def _user(self, headers) -> str | None:
        auth = headers.get("Authorization")
        if auth is None:
            return None
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def _writer(self, headers, namespace: str) -> str:
        user = self._user(headers)
        if user is None:
            if self.require_token:
                raise HubError(401, "You must be authenticated to write: send `Authorization: Bearer <token>`.")
            user = self.anonymous_user
        if namespace != user and namespace not in self.orgs.get(user, []):
            raise HubError(403, f"You don't have the rights to write to the {namespace!r} namespace.")
        return user

    def _readable_repo(self, headers, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.private:
            user = self._user(headers)
            if user is None:
                raise HubError(401, "Repository not found", "RepoNotFound")
            namespace = repo_id.split("/")[0]
            if namespace != user and namespace not in self.orgs.get(user, []):
                raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _writable_repo(self, headers, repo_type: str, repo_id: str) -> Repo:
        self._writer(headers, repo_id.split("/")[0])
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    # ----------------------------------------------------------------------------------------------------------
    # Repository operations
    # ----------------------------------------------------------------------------------------------------------

    def _new_commit_oid(self, repo: Repo, message: str) -> str:
        salt = f"{repo.repo_id}\0{len(repo.history)}\0{message}\0{time.time_ns()}\0{secrets.token_hex(4)}"
        return hashlib.sha1(salt.encode()).hexdigest()

    def create_repo(self, headers, payload: dict) -> dict:
        name, organization = payload.get("name"), payload.get("organization")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise HubError(400, f"Invalid repo name {name!r}.")
        user = self._user(headers)
        if user is None and self.require_token:
            raise HubError(401, "You must be authenticated to create a repo: send `Authorization: Bearer <token>`.")
        namespace = organization or user or self.anonymous_user
        self._writer(headers, namespace)
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type!r}.")
        repo_id = f"{namespace}/{name}"
        url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}", url=url)  # as the Hub
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = Repo(repo_id=repo_id, repo_type=repo_type, private=private)
            gitattributes = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
            self._store_commit(
                repo, None, "initial commit", "", {".gitattributes": Blob(gitattributes, False)}, {}, [], "main"
            )
            self.repos[(repo_type, repo_id)] = repo
        return {"url": url, "name": repo_id, "id": secrets.token_hex(12)}

    def _store_commit(self, repo, parent, message, description, files, added, deleted, branch) -> Commit:
        commit = Commit(self._new_commit_oid(repo, message), parent, message, description, files, added, deleted)
        repo.commits[commit.oid] = commit
        repo.history.append(commit.oid)
        repo.branches[branch] = commit.oid
        return commit

    def create_branch(self, headers, repo_type: str, repo_id: str, branch: str, payload: dict) -> dict:
        repo = self._writable_repo(headers, repo_type, repo_id)
        with self._lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference refs/heads/{branch} already exists")
            repo.branches[branch] = repo.resolve(payload.get("startingPoint") or "main").oid
        return {}

    def upload_mode_for(self, repo: Repo, revision: str, path: str, size: int) -> str:
        if self.upload_mode == "regular" and size <= MAX_REGULAR_SIZE:
            return "regular"
        try:
            gitattributes = repo.resolve(revision).files.get(".gitattributes")
        except HubError:
            gitattributes = None
        patterns = LFS_PATTERNS
        if gitattributes is not None:
            patterns = [line.split()[0] for line in gitattributes.data.decode().splitlines() if "filter=lfs" in line]
        name = path.rsplit("/", 1)[-1]
        if size > MAX_REGULAR_SIZE or any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
            return "lfs"
        return "regular"

    def preupload(self, headers, repo_type: str, repo_id: str, revision: str, payload: dict) -> dict:
        repo = self._writable_repo(headers, repo_type, repo_id)
        commit = repo.resolve(revision)
        files = payload.get("files")
        if not isinstance(files, list):
            raise HubError(400, "`files` must be a list.")
        answers = []
        for item in files:
            if not (isinstance(item, dict) and isinstance(item.get("path"), str) and isinstance(item.get("size"), int)):
                raise HubError(400, f"Each file needs a path and a size, got {item!r}.")
            base64.b64decode(item.get("sample", ""), validate=True)
            mode = self.upload_mode_for(repo, revision, item["path"], item["size"])
            existing = commit.files.get(item["path"])
            oid = None
            if existing is not None:  # compared by the client with its local oid to skip unchanged files
                oid = existing.sha256 if existing.lfs else git_blob_oid(existing.data)
            answers.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return {"files": answers, "commitOid": commit.oid}

    def lfs_batch(self, headers, repo_type: str, repo_id: str, payload: dict) -> dict:
        repo = self._writable_repo(headers, repo_type, repo_id)
        if payload.get("operation") != "upload":
            raise HubError(400, f"Only the upload operation is supported, got {payload.get('operation')!r}.")
        if "basic" not in (payload.get("transfers") or ["basic"]):
            raise HubError(400, f"Only the basic transfer is offered, the client asked for {payload.get('transfers')}.")
        if payload.get("hash_algo", "sha256") != "sha256":
            raise HubError(400, f"Only sha256 is supported, got {payload.get('hash_algo')!r}.")
        key = (repo_type, repo_id)
        objects = []
        for item in payload.get("objects") or []:
            oid, size = item.get("oid"), item.get("size")
            if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int):
                error = {"code": 422, "message": "Invalid oid or size"}
                objects.append({"oid": str(oid), "size": int(size or 0), "error": error})
                continue
            answer = {"oid": oid, "size": size, "authenticated": True}
            stored = repo.lfs_objects.get(oid)
            if stored is None or len(stored) != size:
                upload, verify = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
                with self._lock:
                    self._tickets[upload] = ("upload", key, oid, size)
                    self._tickets[verify] = ("verify", key, oid, size)
                answer["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-upload/{upload}", "header": {}},
                    "verify": {"href": f"{self.url}/lfs-verify/{verify}", "header": {}},
                }
            objects.append(answer)
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_upload(self, ticket: str, body: bytes) -> None:
        kind, key, oid, size = self._ticket(ticket, "upload")
        if len(body) != size:
            raise HubError(400, f"Object {oid}: received {len(body)} bytes, announced {size}.")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Object {oid}: the content's sha256 is {hashlib.sha256(body).hexdigest()}.")
        with self._lock:
            self._pending[(key, oid)] = body

    def lfs_verify(self, headers, ticket: str, payload: dict) -> dict:
        kind, key, oid, size = self._ticket(ticket, "verify")
        self._writable_repo(headers, *key)
        if payload.get("oid") != oid or payload.get("size") != size:
            raise HubError(400, f"Verify names {payload.get('oid')} ({payload.get('size')} bytes), expected {oid}.")
        with self._lock:
            body = self._pending.pop((key, oid), None)
            if body is None:
                raise HubError(404, f"Object {oid} was not uploaded.")
            self.repos[key].lfs_objects[oid] = body
        return {}

    def _ticket(self, ticket: str, kind: str):
        with self._lock:
            entry = self._tickets.get(ticket)
        if entry is None or entry[0] != kind:
            raise HubError(403, "Unknown or expired upload link.")
        return entry

    def commit(self, headers, repo_type: str, repo_id: str, revision: str, body: bytes) -> dict:
        repo = self._writable_repo(headers, repo_type, repo_id)
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
        try:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise HubError(400, f"The commit payload is not NDJSON: {error}")
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line of a commit must be its header.")
        header = lines[0].get("value") or {}
        message = header.get("summary")
        if not isinstance(message, str) or not message:
            raise HubError(400, "The commit header needs a non-empty summary.")
        with self._lock:
            head = repo.resolve(revision)
            parent_commit = header.get("parentCommit")
            if parent_commit is not None and parent_commit != head.oid:
                raise HubError(412, f"A commit has happened since {parent_commit}: {revision} is at {head.oid}.")
            # Build the new tree aside: nothing changes until every operation checked out.
            files, added, deleted = dict(head.files), {}, []
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = value.get("path")
                if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
                    raise HubError(400, f"Invalid path {path!r} in a {key!r} operation.")
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"{path}: only base64 file content is supported.")
                    data = base64.b64decode(value.get("content", ""), validate=True)
                    files[path], added[path] = Blob(data, False), "regular"
                elif key == "lfsFile":
                    oid = value.get("oid")
                    if value.get("algo", "sha256") != "sha256":
                        raise HubError(400, f"{path}: unsupported LFS hash {value.get('algo')!r}.")
                    data = repo.lfs_objects.get(oid)
                    if data is None:
                        raise HubError(400, f"{path}: LFS object {oid} was never uploaded to {repo_id}.")
                    if "size" in value and value["size"] != len(data):
                        raise HubError(400, f"{path}: LFS object {oid} has {len(data)} bytes, not {value['size']}.")
                    files[path], added[path] = Blob(data, True), "lfs"
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"{path}: cannot delete a file that does not exist.", "EntryNotFound")
                    del files[path]
                    deleted.append(path)
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    gone = [name for name in files if name.startswith(prefix)]
                    for name in gone:
                        del files[name]
                    deleted.extend(gone)
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}.")
            commit = self._store_commit(
                repo, head.oid, message, header.get("description") or "", files, added, deleted, revision
            )
        prefix = URL_PREFIXES[repo_type]
        return {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{self.url}/{prefix}{repo_id}/commit/{commit.oid}",
            "pullRequestUrl": None,
        }

    # ----------------------------------------------------------------------------------------------------------
    # Reads
    # ----------------------------------------------------------------------------------------------------------

    @staticmethod
    def _file_entry(path: str, blob: Blob) -> dict:
        entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
        return entry

    @staticmethod
    def _folder_entry(path: str, commit: Commit) -> dict:
        listing = "\n".join(sorted(name for name in commit.files if name.startswith(path + "/")))
        return {"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "path": path}

    def repo_info(self, headers, repo_type: str, repo_id: str, revision: str, blobs: bool) -> dict:
        repo = self._readable_repo(headers, repo_type, repo_id)
        commit = repo.resolve(revision)
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(size=blob.size, blobId=blob.git_oid)
                if blob.lfs:
                    sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.created_at))
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo_id.split("/")[0],
            "sha": commit.oid, "lastModified": stamp, "createdAt": stamp, "private": repo.private, "gated": False,
            "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        }  # fmt: skip
        readme = commit.files.get("README.md")
        metadata = _front_matter(readme.data.decode()) if readme is not None else None
        if isinstance(metadata, dict):
            info["cardData"] = metadata
            info["tags"] = list(metadata.get("tags") or [])
            for key in ("pipeline_tag", "library_name"):
                if key in metadata:
                    info[key] = metadata[key]
        config = commit.files.get("config.json")
        if config is not None:
            try:
                info["config"] = {"model_type": json.loads(config.data).get("model_type")}
            except json.JSONDecodeError:
                pass
        return info

    def tree(self, headers, repo_type: str, repo_id: str, revision: str, path: str, recursive: bool) -> list:
        commit = self._readable_repo(headers, repo_type, repo_id).resolve(revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(name.startswith(prefix) for name in commit.files):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        entries, folders = [], set()
        for name, blob in sorted(commit.files.items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :].split("/")
            for depth in range(1, len(rest) if recursive else min(len(rest), 2)):
                folder = prefix + "/".join(rest[:depth])
                if folder not in folders:
                    folders.add(folder)
                    entries.append(self._folder_entry(folder, commit))
            if recursive or len(rest) == 1:
                entries.append(self._file_entry(name, blob))
        return entries

    def paths_info(self, headers, repo_type: str, repo_id: str, revision: str, paths: list[str]) -> list:
        commit = self._readable_repo(headers, repo_type, repo_id).resolve(revision)
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                entries.append(self._file_entry(path, commit.files[path]))
            elif any(name.startswith(path + "/") for name in commit.files):
                entries.append(self._folder_entry(path, commit))
        return entries

    def resolve(self, headers, repo_type: str, repo_id: str, revision: str, path: str):
        commit = self._readable_repo(headers, repo_type, repo_id).resolve(revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        response_headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob.git_oid}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            response_headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        return blob.data, response_headers


def _front_matter(text: str):
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if match is None:
        return None
    return yaml.safe_load(match.group(1))


def validate_card_metadata(content: str) -> list[str]:
    """What the Hub's validate-yaml would refuse in a README's metadata (a subset of its rules)."""
    try:
        metadata = _front_matter(content)
    except yaml.YAMLError as error:
        return [f"Invalid YAML: {error}"]
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return ["The metadata must be a mapping."]
    errors = []
    for key in ("license", "library_name", "pipeline_tag"):
        if key in metadata and not isinstance(metadata[key], str):
            errors.append(f'"{key}" must be a string')
    if "pipeline_tag" in metadata and metadata["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" {metadata["pipeline_tag"]!r} is not a known pipeline tag')
    for key in ("tags", "datasets", "base_model", "language"):
        value = metadata.get(key)
        if value is not None and not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            errors.append(f'"{key}" must be a string or a list of strings')
    for model in metadata.get("model-index") or []:
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append('"model-index" entries need a name')
            continue
        for result in model.get("results") or []:
            task, dataset = result.get("task") or {}, result.get("dataset") or {}
            if not isinstance(task.get("type"), str):
                errors.append('"model-index" results need task.type')
            if not isinstance(dataset.get("type"), str) or not isinstance(dataset.get("name"), str):
                errors.append('"model-index" results need dataset.type and dataset.name')
            for metric in result.get("metrics") or []:
                if not isinstance(metric.get("type"), str) or not isinstance(metric.get("value"), (int, float, str)):
                    errors.append('"model-index" metrics need a type and a value')
    return errors


# --------------------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def log_message(self, format, *args):  # quiet: requests are recorded in hub.requests instead
        pass

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    # ----------------------------------------------------------------------------------------------------------

    def _read_body(self, limit: int | None = None) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if limit is not None and sum(map(len, chunks)) >= limit:
                    return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length if limit is None else min(length, limit))

    def _maybe_drop(self, method: str, path: str) -> bool:
        hub = self.hub
        with hub._lock:
            fault = next((f for f in hub._faults if f[0] == method and f[1].search(path) and f[2] > 0), None)
            if fault is None:
                return False
            fault[2] -= 1
        length = int(self.headers.get("Content-Length") or 0)
        self._read_body(limit=max(1, length // 2))
        hub.dropped.append(f"{method} {path}")
        hub.requests.append(RequestRecord(method, path, 0))
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, value, headers: dict | None = None, content_type: str = "application/json"):
        self._send(status, json.dumps(value).encode(), headers, content_type)

    def _handle(self, method: str):
        split = urlsplit(self.path)
        raw_path, query = split.path, parse_qs(split.query)
        if self._maybe_drop(method, raw_path):
            return
        status = 500
        try:
            status = self._route(method, raw_path, query)
        except HubError as error:
            status = error.status
            headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._send_json(error.status, {"error": error.message, **error.body}, headers)
        except Exception as error:  # a bug here must show up as a failed request, not a hung client
            self._send_json(500, {"error": f"{type(error).__name__}: {error}"})
        finally:
            self.hub.requests.append(RequestRecord(method, raw_path, status))

    def _route(self, method: str, raw_path: str, query: dict) -> int:
        hub, headers = self.hub, self.headers
        parts = raw_path.strip("/").split("/")
        seg = [unquote(part) for part in parts]
        body = self._read_body() if method in ("POST", "PUT") else b""

        def payload() -> dict:
            try:
                value = json.loads(body or b"{}")
            except json.JSONDecodeError as error:
                raise HubError(400, f"The request body is not JSON: {error}")
            if not isinstance(value, dict):
                raise HubError(400, "The request body must be a JSON object.")
            return value

        def ok(value, status=200, **kwargs) -> int:
            self._send_json(status, value, **kwargs)
            return status

        # /api/...
        if seg[:1] == ["api"]:
            if method == "POST" and seg[1:] == ["repos", "create"]:
                return ok(hub.create_repo(headers, payload()))
            if method == "POST" and seg[1:] == ["validate-yaml"]:
                errors = validate_card_metadata(payload().get("content", ""))
                return ok({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)
            if method == "GET" and seg[1:] == ["agent-harnesses"]:  # the client's user-agent telemetry
                return ok({"standardEnvVars": [], "harnesses": {}})
            if method == "GET" and seg[1:] == ["whoami-v2"]:
                user = hub._user(headers)
                if user is None:
                    raise HubError(401, "Invalid credentials in Authorization header")
                orgs = [{"name": org} for org in hub.orgs.get(user, [])]
                token = {"displayName": "local", "role": "write"}
                auth = {"type": "access_token", "accessToken": token}
                return ok({"type": "user", "name": user, "orgs": orgs, "auth": auth})
            if len(seg) >= 4 and seg[1] in REPO_TYPES:
                repo_type, repo_id, rest = REPO_TYPES[seg[1]], f"{seg[2]}/{seg[3]}", seg[4:]
                if method == "GET" and not rest:
                    return ok(hub.repo_info(headers, repo_type, repo_id, "main", _flag(query, "blobs")))
                if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                    return ok(hub.repo_info(headers, repo_type, repo_id, rest[1], _flag(query, "blobs")))
                if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                    path = "/".join(rest[2:])
                    return ok(hub.tree(headers, repo_type, repo_id, rest[1], path, _flag(query, "recursive")))
                if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                    form = parse_qs(body.decode())
                    paths = form.get("paths", [])
                    if not paths and body.strip().startswith(b"{"):
                        paths = payload().get("paths", [])
                    return ok(hub.paths_info(headers, repo_type, repo_id, rest[1], paths))
                if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                    return ok(hub.preupload(headers, repo_type, repo_id, rest[1], payload()))
                if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                    return ok(hub.commit(headers, repo_type, repo_id, rest[1], body))
                if method == "POST" and len(rest) == 2 and rest[0] == "branch":
                    return ok(hub.create_branch(headers, repo_type, repo_id, rest[1], payload()))
                if rest[:1] in (["xet-write-token"], ["xet-read-token"]):
                    hub.xet_requests.append(f"{method} {raw_path}")
                    raise HubError(501, "This server does not speak Xet: set HF_HUB_DISABLE_XET=1 or upload 'regular'.")

        # LFS objects
        if method == "PUT" and len(seg) == 2 and seg[0] == "lfs-upload":
            hub.lfs_upload(seg[1], body)
            return ok({})
        if method == "POST" and len(seg) == 2 and seg[0] == "lfs-verify":
            return ok(hub.lfs_verify(headers, seg[1], payload()))

        # /{prefix}{namespace}/{name}.git/info/lfs/objects/batch and /{prefix}{namespace}/{name}/resolve/{rev}/{path}
        repo_type, repo_seg = "model", seg
        if seg and seg[0] in REPO_TYPES and seg[0] != "models" and len(seg) > 3:
            repo_type, repo_seg = REPO_TYPES[seg[0]], seg[1:]
        if method == "POST" and len(repo_seg) == 6 and repo_seg[1].endswith(".git") and repo_seg[2:] == [
            "info", "lfs", "objects", "batch"
        ]:  # fmt: skip
            repo_id = f"{repo_seg[0]}/{repo_seg[1][: -len('.git')]}"
            answer = hub.lfs_batch(headers, repo_type, repo_id, payload())
            return ok(answer, content_type="application/vnd.git-lfs+json")
        if method in ("GET", "HEAD") and len(repo_seg) >= 5 and repo_seg[2] == "resolve":
            repo_id = f"{repo_seg[0]}/{repo_seg[1]}"
            data, response_headers = hub.resolve(headers, repo_type, repo_id, repo_seg[3], "/".join(repo_seg[4:]))
            return self._send_file(data, response_headers)

        hub.unhandled.append(f"{method} {raw_path}")
        raise HubError(404, f"No route for {method} {raw_path}")

    def _send_file(self, data: bytes, headers: dict) -> int:
        status, start = 200, 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match is not None and 0 < int(match.group(1)) <= len(data):
            start, status = int(match.group(1)), 206
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        self._send(status, data[start:], headers, content_type="application/octet-stream")
        return status


def _flag(query: dict, name: str) -> bool:
    return any(value.lower() in ("1", "true") for value in query.get(name, []))


__all__ = ["LocalHub", "Commit", "Blob", "DEFAULT_TOKEN", "DEFAULT_USER", "validate_card_metadata"]
