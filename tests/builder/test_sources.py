"""builder/sources.py: a source is verified and described at every step, its model parsed once."""

from __future__ import annotations

import onnx

from qaic_assets.builder import sources


def test_a_source_model_is_parsed_once_per_content(tiny_project, monkeypatch):
    sources._description.cache_clear()
    parsed = []
    real = onnx.load
    monkeypatch.setattr(sources.onnx, "load", lambda *a, **k: parsed.append(a[0]) or real(*a, **k))
    config = tiny_project.config
    first = sources.ensure_source(config, "tiny")
    second = sources.ensure_source(config, "tiny")
    assert len(parsed) == 1 and second.description == first.description
    second.description["inputs"].clear()  # a caller's copy: the next caller still gets the whole description
    assert sources.ensure_source(config, "tiny").description == first.description and len(parsed) == 1

    model = real(str(first.path))
    model.graph.node[0].name = "renamed"  # other bytes: parsed again
    onnx.save(model, str(first.path))
    third = sources.ensure_source(config, "tiny")
    assert third.sha256 != first.sha256 and len(parsed) == 2
