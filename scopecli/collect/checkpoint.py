"""Collect's pass-1 state and its `--resume` sidecar.

Pass 1 (activations over every image) is the long part of collect, and what it has accumulated (streaming
top-k, statistic sketches, probe rows, per-image metadata) lives in memory. `Pass1State` names every piece
of it; `Pass1Checkpoint` saves it beside the output as `OUT.collect-state` (an .npz of plain arrays, no
pickle, replaced atomically) together with the parameters it belongs to. A resumed run refuses a state
whose parameters differ, restores it and continues with the next batch, so its batches, and hence its
numbers, are exactly those of an uninterrupted run. The sidecar is removed once the artifact is written.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np
import torch

from scopecli.collect.sample import StreamingSample
from scopecli.collect.stats import LayerStats
from scopecli.collect.topk import StreamingExtremes
from scopecli.core.errors import ScopeError
from scopecli.core.fileio import AtomicFile
from scopecli.core.records import LayerRecord

STATE_SUFFIX = ".collect-state"
STATE_VERSION = 5  # 5: the activation sample and top-k slots in any order; 4: one of them; 3: heatmaps and the
# strongest images; 2: named arrays; 1: positional accumulators
READABLE_VERSIONS = (3, 4, STATE_VERSION)  # older states' winners (best first, maybe fewer columns) are valid slots
_META = "__meta__"


def state_path(out: str) -> str:
    """Where the pass-1 state of a collect writing `out` is kept."""
    return os.fspath(out) + STATE_SUFFIX


def paths_digest(paths) -> str:
    """sha256 of the image list a run walks (a changed dataset must not resume an old state)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class LayerPass1:
    """One layer's pass-1 accumulators."""

    record: LayerRecord
    stats: LayerStats
    top: StreamingExtremes
    bottom: StreamingExtremes
    strongest: StreamingExtremes | None = None  # top 1 % of images (label profiles), when more than top-k
    sample: StreamingSample | None = None  # seeded uniform sample of position vectors (--sample N)
    probe_rows: list[torch.Tensor] = field(default_factory=list)  # float16 [rows, C] per batch (any device)

    def trackers(self) -> dict[str, StreamingExtremes]:
        out = {"top": self.top, "bottom": self.bottom}
        if self.strongest is not None:
            out["strongest"] = self.strongest
        return out

    def parts(self) -> list[tuple[str, object]]:
        """Every accumulator with state arrays, by the name its arrays are saved under."""
        out = [("stats", self.stats)] + list(self.trackers().items())
        return out + ([("sample", self.sample)] if self.sample is not None else [])

    def probe_acts(self) -> np.ndarray:
        """The probe rows so far as one float16 [rows, C] array."""
        if not self.probe_rows:
            return np.zeros((0, self.record.units), np.float16)
        return torch.cat([r.cpu() for r in self.probe_rows]).numpy().astype(np.float16)


class PixelMoments:
    """Running per-channel sums of the model-input pixels in [0, 1]: their mean and channel covariance, from which
    render builds the N-channel colour decorrelation (Lucid's RGB matrix, generalised). float64 on the device."""

    def __init__(self, channels: int, device):
        self.n = 0
        self.sum = torch.zeros(channels, dtype=torch.float64, device=device)
        self.outer = torch.zeros(channels, channels, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> None:
        """x: (B, C, H, W) in [0, 1] (the good images of a batch)."""
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
        self.n += flat.shape[1]
        self.sum += flat.sum(dim=1)
        self.outer += flat @ flat.T

    def result(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean [C], covariance [C, C]) or None before any pixel."""
        if self.n < 2:
            return None
        mean = (self.sum / self.n).cpu().numpy()
        cov = (self.outer / self.n).cpu().numpy() - np.outer(mean, mean)
        return mean, (cov + cov.T) / 2

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"n": np.array([self.n], np.int64), "sum": self.sum.cpu().numpy(), "outer": self.outer.cpu().numpy()}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if set(arrays) != {"n", "sum", "outer"} or arrays["sum"].shape != tuple(self.sum.shape) \
                or arrays["outer"].shape != tuple(self.outer.shape):
            raise ValueError("pixel moments do not fit this run")
        self.n = int(arrays["n"][0])
        self.sum.copy_(torch.from_numpy(np.array(arrays["sum"])))
        self.outer.copy_(torch.from_numpy(np.array(arrays["outer"])))


@dataclass
class Pass1State:
    """Everything pass 1 has accumulated over the shard's first `batches` batches of m candidate images.

    Per-image lists are indexed by position in the shard (image index - first candidate)."""

    layers: dict[str, LayerPass1]
    ok: np.ndarray  # bool [m]: the image was read and used
    sha256: list[str]
    width: list[int]
    height: list[int]
    reason: list[str]  # why an image was skipped ('' when ok)
    probe_index: list[np.ndarray] = field(default_factory=list)  # image indices of the probe rows, per batch
    batches: int = 0
    pixels: "PixelMoments | None" = None  # channel moments of the inputs (models whose input is not 8-bit RGB)

    @classmethod
    def empty(cls, records: list[LayerRecord], m: int, device, trackers, sample: tuple[int, int] = (0, 0)) -> "Pass1State":
        """trackers(record) -> (top, bottom, strongest or None) StreamingExtremes of that layer;
        sample: (N, seed) of the activation sample (N 0: none)."""
        layers = {r.name: LayerPass1(r, LayerStats(r.units, device), *trackers(r),
                                     StreamingSample(r.units, *sample) if sample[0] else None) for r in records}
        return cls(layers, np.zeros(m, dtype=bool), [""] * m, [0] * m, [0] * m, [""] * m)

    def probe_image_index(self) -> np.ndarray:
        return np.concatenate(self.probe_index) if self.probe_index else np.zeros(0, np.int64)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every piece as a named plain array (layers by position, so any layer name is safe as a key)."""
        out = {
            "images/ok": np.asarray(self.ok, dtype=bool),
            "images/sha256": np.array(self.sha256, dtype=str),
            "images/reason": np.array(self.reason, dtype=str),
            "images/width": np.array(self.width, dtype=np.int64),
            "images/height": np.array(self.height, dtype=np.int64),
            "probe/image_index": self.probe_image_index(),
        }
        for i, acc in enumerate(self.layers.values()):
            for part, obj in acc.parts():
                for name, arr in obj.state_arrays().items():
                    out[f"layer{i}/{part}/{name}"] = arr
            out[f"layer{i}/probe"] = acc.probe_acts()
        if self.pixels is not None:
            out.update({f"pixels/{k}": v for k, v in self.pixels.state_arrays().items()})
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Fill this (empty) state from `state_arrays()` output; ValueError when it is not this run's."""
        m = len(self.sha256)
        for key in ("images/ok", "images/sha256", "images/reason", "images/width", "images/height"):
            if key not in arrays or arrays[key].shape != (m,):
                raise ValueError(f"{key} does not hold {m} images")
        self.ok[...] = arrays["images/ok"]
        self.sha256[:] = [str(x) for x in arrays["images/sha256"].tolist()]
        self.reason[:] = [str(x) for x in arrays["images/reason"].tolist()]
        self.width[:] = [int(x) for x in arrays["images/width"].tolist()]
        self.height[:] = [int(x) for x in arrays["images/height"].tolist()]
        probe_index = arrays.get("probe/image_index")
        self.probe_index[:] = [probe_index] if probe_index is not None and len(probe_index) else []
        for i, acc in enumerate(self.layers.values()):
            for part, obj in acc.parts():
                prefix = f"layer{i}/{part}/"
                obj.load_state_arrays({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
            probe = arrays.get(f"layer{i}/probe")
            if probe is None or probe.shape[1:] != (acc.record.units,):
                raise ValueError(f"probe rows of layer {acc.record.name} do not fit it")
            acc.probe_rows[:] = [torch.from_numpy(np.array(probe))] if len(probe) else []
        if self.pixels is not None:
            self.pixels.load_state_arrays({k[7:]: v for k, v in arrays.items() if k.startswith("pixels/")})


class Pass1Checkpoint:
    """Saves/restores collect's pass-1 state in `OUT.collect-state` every `every_s` seconds (0: every batch)."""

    def __init__(self, out: str, params: dict, every_s: float = 300.0, resume: bool = False):
        self.path = state_path(out)
        self.params = json.loads(json.dumps(params, sort_keys=True, default=str))
        self.every_s = float(every_s)
        self.loaded: dict[str, np.ndarray] | None = None
        self.start_batch = 0  # batches the loaded state had done
        self._last = time.monotonic()
        for stale in glob.glob(glob.escape(self.path) + ".tmp*"):  # left by a killed run
            try:
                os.remove(stale)
            except OSError:
                pass
        if resume and os.path.exists(self.path):
            self.loaded = self._load()

    def _load(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ScopeError(f"{self.path}: unreadable resume state ({exc}); delete it or run without --resume")
        try:
            meta = json.loads(bytes(arrays.pop(_META)).decode("utf-8"))
        except (KeyError, ValueError, UnicodeDecodeError):
            raise ScopeError(f"{self.path}: not a scope collect state; delete it or run without --resume")
        if meta.get("version") not in READABLE_VERSIONS:
            raise ScopeError(f"{self.path}: resume state version {meta.get('version')} is not {STATE_VERSION}; "
                             "run without --resume")
        if meta.get("params") != self.params:
            diff = sorted(k for k in set(self.params) | set(meta.get("params", {}))
                          if self.params.get(k) != meta.get("params", {}).get(k))
            raise ScopeError(f"{self.path}: was saved by a collect with other parameters ({', '.join(diff[:5])}); "
                             "rerun with the same ones, or without --resume")
        self.start_batch = int(meta["batches"])
        return arrays

    def restore(self, state: Pass1State) -> None:
        """Fill a fresh state from the loaded sidecar (nothing to do without one)."""
        if self.loaded is None:
            return
        try:
            state.load_state_arrays(self.loaded)
        except (ValueError, TypeError, IndexError):
            raise ScopeError(f"{self.path}: the saved state does not match this run; run without --resume") from None
        state.batches = self.start_batch

    def save(self, state: Pass1State, force: bool = False, pass1_done: bool = False) -> None:
        """Write the state atomically when it is due (every batch with every_s 0), or now with `force`."""
        if not force and time.monotonic() - self._last < self.every_s:
            return
        data = state.state_arrays()
        meta = {"version": STATE_VERSION, "batches": int(state.batches), "params": self.params,
                "pass1_done": pass1_done}
        data[_META] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        with AtomicFile(self.path) as target, open(target.tmp, "wb") as fh:
            np.savez(fh, **data)
        self._last = time.monotonic()

    def remove(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
