"""Source models: a local file, an https download pinned by sha256, or a generated stand-in.

Each is verified (exists, non-empty, parses as ONNX) and described (inputs, opset, size, sha256)
before anything is compiled from it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import onnx

from qaic_assets.settings import Settings
from qaic_assets.builder.store import model_inputs, source_dir
from qaic_assets.files import NotReadable, require_regular
from qaic_assets.hashing import sha256_file, sha256_input

CHUNK = 1 << 20


class SourceError(RuntimeError):
    """A source model that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class SourceModel:
    path: Path
    sha256: str
    kind: str  # "path", "url" or "standin"
    description: dict

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def describe_onnx(path: Path) -> dict:
    """Inputs (name, dtype, shape with symbols), outputs and opset, read without external weights."""
    try:
        require_regular(path)  # onnx opens it itself: a FIFO would block that open forever
    except NotReadable as exc:
        raise SourceError(f"model file {path} {exc.strerror}: re-export or re-download it") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for non-ONNX bytes
        raise SourceError(
            f"model file {path} is not a valid ONNX model ({type(exc).__name__}: {exc}); "
            "re-export or re-download it"
        ) from None
    if not model.graph.node:
        raise SourceError(f"model file {path} has an empty graph: re-export or re-download it")
    if not model.opset_import:
        # protobuf cut at a field boundary still parses: the opset table, written last, is then missing
        raise SourceError(f"model file {path} has no opset_import (truncated?): re-export or re-download it")
    initializers = {init.name for init in model.graph.initializer}

    def tensor(value: onnx.ValueInfoProto) -> dict:
        t = value.type.tensor_type
        return {
            "name": value.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
        }

    return {
        "inputs": [tensor(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [tensor(v) for v in model.graph.output],
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        "nodes": len(model.graph.node),
    }


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to https:// URLs (urllib would follow https -> http)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.startswith("https://"):
            raise SourceError(f"refusing to follow the redirect of {req.full_url} to {newurl}: "
                              "only https:// URLs are allowed; fix the URL in the config")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str):
    """The response of an https GET (redirects stay on https)."""
    opener = urllib.request.build_opener(_HttpsOnlyRedirects)
    return opener.open(url, timeout=60)


def _download(url: str, sha256: str, dest: Path) -> None:
    """https only; the file lands at dest only when its sha256 matches."""
    if not url.startswith("https://"):
        raise SourceError(f"refusing to download {url}: only https:// URLs are allowed")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.download-")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, _open(url) as response:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise SourceError(
                f"download of {url} has sha256 {digest.hexdigest()}, expected {sha256}: the file was "
                "discarded; fix the URL or the sha256 in the config"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _leave_nothing(directory: Path):
    """On failure, remove what the block added under ``directory`` (files, then emptied folders,
    the folder itself and its parents when the block created them): a failed download or a stand-in
    cut short by a full disk leaves nothing behind."""
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    before = _tree(directory)
    try:
        yield
    except BaseException:
        for path in sorted(_tree(directory) - before, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        for path in created:  # innermost first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def _tree(directory: Path) -> set[Path]:
    found = set()
    for root, dirs, files in os.walk(directory):
        found.update(Path(root) / name for name in dirs + files)
    return found


def _fetch(config: Settings, model: str, url: str, sha256: str, path: Path) -> None:
    """Download with network errors named (URL, reason, where to fix it) instead of raw tracebacks."""
    fix = (f"fix models.{model}.source.url in {config.source_file}, or download the file yourself and "
           "give its path as source.path")
    try:
        _download(url, sha256, path)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"cannot download {url}: the server answered HTTP {exc.code} {exc.reason}; {fix}") from None
    except urllib.error.URLError as exc:
        raise SourceError(f"cannot download {url}: {exc.reason}; check the network (proxy, DNS) or {fix}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise SourceError(f"cannot download {url}: {type(exc).__name__}: {exc}; check the network or {fix}") from None


def ensure_source(config: Settings, model: str) -> SourceModel:
    """Make the model file present and verified; never re-downloads or regenerates a good file."""
    src = config.model(model).source
    path = model_inputs(config, model).model
    if src.standin:
        from qaic_assets.models.standins import build_standin

        with _leave_nothing(source_dir(config, model)):
            path = build_standin(src.standin, source_dir(config, model)).model
        kind = "standin"
    elif src.url:
        kind = "url"
        if not (path.is_file() and sha256_file(path) == src.sha256):
            path.unlink(missing_ok=True)  # a stale or tampered copy is never used
            with _leave_nothing(path.parent):
                _fetch(config, model, src.url, src.sha256, path)
    else:
        kind = "path"
        fix = f"fix models.{model}.source.path in {config.source_file}"
        try:
            require_regular(path)
        except FileNotFoundError:
            raise SourceError(f"model file {path} for {model!r} does not exist: {fix}") from None
        except NotReadable as exc:
            raise SourceError(f"model file {path} for {model!r} {exc.strerror}: {fix}") from None
    if path.stat().st_size == 0:
        raise SourceError(f"model file {path} for {model!r} is empty: re-export or re-download it")
    sha256 = sha256_input(path)
    return SourceModel(path=path, sha256=sha256, kind=kind, description=copy.deepcopy(_description(str(path), sha256)))


@functools.lru_cache(maxsize=32)
def _description(path: str, sha256: str) -> dict:
    """describe_onnx, once per file content in this process: parsing a whole model is not free
    (docs/BENCHMARKS.md), and every calibrate and compile step verifies its source (ensure_source)."""
    return describe_onnx(Path(path))
