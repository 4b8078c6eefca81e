"""Small policies and bundle surgery for the policy tests."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np

from malpi.policy.spec import ConvLayer, PolicySpec

# Small enough to build and convert in about a second, big enough to have every part.
TINY_SPEC = PolicySpec(
    image_height=48,
    image_width=64,
    conv=(ConvLayer(8, 5, 3), ConvLayer(16, 3, 2)),
    bottleneck=32,
    lstm_units=32,
    num_actions=5,
)


def scale_weights(net, factor: float) -> None:
    """Scale every weight so the LSTM swings through its range and outputs vary strongly."""
    net.set_named_weights({k: v * factor for k, v in net.named_weights().items()})


def sharpen(net) -> None:
    """Make a random policy decide like a trained one: strong features, a confident head."""
    weights = net.named_weights()
    for name, w in weights.items():
        if name.startswith(("conv", "bottleneck")):
            weights[name] = w * 2.0
        elif name.startswith("policy"):
            weights[name] = w * 8.0
    net.set_named_weights(weights)


def rezip(data: bytes, manifest_edit=None, payload_edit=None, fix_checksums=True) -> bytes:
    """Rewrite a bundle: edit its manifest and/or payloads, optionally keeping checksums consistent."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(files["manifest.json"])
    if payload_edit:
        payload_edit(files)
    if fix_checksums:
        for name, entry in manifest["payloads"].items():
            entry["sha256"] = hashlib.sha256(files[name]).hexdigest()
            entry["bytes"] = len(files[name])
    if manifest_edit:
        manifest_edit(manifest)
    files["manifest.json"] = json.dumps(manifest).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return out.getvalue()


def edit_weights(files: dict, fn) -> None:
    with np.load(io.BytesIO(files["weights.npz"])) as npz:
        weights = {k: npz[k] for k in npz.files}
    fn(weights)
    buf = io.BytesIO()
    np.savez(buf, **weights)
    files["weights.npz"] = buf.getvalue()
