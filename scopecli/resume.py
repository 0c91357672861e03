"""`--resume` for long runs: what an interrupted render or collect has already done, and where to go on.

render: the artifact itself is the state. Each batch is committed atomically (`ArtifactWriter.checkpoint`),
and a resumed run skips the renders already stored with the same settings and per-image seed, so it ends
with the same file an uninterrupted run writes.

collect: pass 1 (activations over every image) is the long part and its state (streaming top-k, statistic
sketches, probe rows, per-image metadata) lives in memory. It is saved in a sidecar `OUT.collect-state`
(an .npz of plain arrays, no pickle, replaced atomically) together with the parameters it belongs to; a
resumed run refuses a state whose parameters differ, restores it and continues with the next batch, so
its batches, and hence its numbers, are exactly those of an uninterrupted run. The sidecar is removed
once the artifact is written.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
import zipfile

import numpy as np

from scopecli.errors import ScopeError

STATE_SUFFIX = ".collect-state"
STATE_VERSION = 1


def state_path(out: str) -> str:
    return os.fspath(out) + STATE_SUFFIX


def paths_digest(paths) -> str:
    """sha256 of the image list a run walks (a changed dataset must not resume an old state)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


def _obj_state(obj) -> dict:
    """Public tensor / number attributes of a streaming accumulator (LayerStats, StreamingExtremes)."""
    import torch

    out = {}
    for name, value in vars(obj).items():
        if name.startswith("_") or isinstance(value, bool):
            continue
        if isinstance(value, torch.Tensor):
            out[name] = value.detach().cpu().numpy()
        elif isinstance(value, (int, float, np.integer, np.floating)):
            out[name] = np.asarray(value)
    return out


def _restore_obj(obj, arrays: dict, where: str) -> None:
    import torch

    mine = _obj_state(obj)
    if set(mine) != set(arrays):
        raise ScopeError(f"{where}: the saved state does not match this version of scope; run without --resume")
    for name, arr in arrays.items():
        cur = getattr(obj, name)
        if isinstance(cur, torch.Tensor):
            setattr(obj, name, torch.from_numpy(np.array(arr)).to(cur.device))
        else:
            setattr(obj, name, type(cur)(arr.item()))


class Pass1Checkpoint:
    """Saves/restores collect's pass-1 state in `OUT.collect-state` every `every_s` seconds (0: every batch)."""

    def __init__(self, out: str, params: dict, every_s: float = 300.0, resume: bool = False):
        self.path = state_path(out)
        self.params = json.loads(json.dumps(params, sort_keys=True, default=str))
        self.every_s = float(every_s)
        self.resume = resume
        self.loaded: dict | None = None
        self._last = time.monotonic()
        for stale in glob.glob(glob.escape(self.path) + ".tmp*"):  # left by a killed run
            try:
                os.remove(stale)
            except OSError:
                pass
        if resume and os.path.exists(self.path):
            self.loaded = self._load()

    def _load(self) -> dict:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ScopeError(f"{self.path}: unreadable resume state ({exc}); delete it or run without --resume")
        try:
            meta = json.loads(bytes(arrays.pop("__meta__")).decode("utf-8"))
        except (KeyError, ValueError, UnicodeDecodeError):
            raise ScopeError(f"{self.path}: not a scope collect state; delete it or run without --resume")
        if meta.get("version") != STATE_VERSION:
            raise ScopeError(f"{self.path}: resume state version {meta.get('version')} is not {STATE_VERSION}; "
                             "run without --resume")
        if meta.get("params") != self.params:
            diff = sorted(k for k in set(self.params) | set(meta.get("params", {}))
                          if self.params.get(k) != meta.get("params", {}).get(k))
            raise ScopeError(f"{self.path}: was saved by a collect with other parameters ({', '.join(diff[:5])}); "
                             "rerun with the same ones, or without --resume")
        arrays["__batches__"] = np.asarray(meta["batches"])
        arrays["__pass1_done__"] = np.asarray(bool(meta.get("pass1_done", False)))
        return arrays

    @property
    def start_batch(self) -> int:
        return int(self.loaded["__batches__"]) if self.loaded is not None else 0

    def restore(self, accumulators: dict, arrays: dict) -> None:
        """Fill `accumulators` {key: object} and the numpy arrays in `arrays` {key: ndarray} from the state."""
        st = self.loaded
        for key, obj in accumulators.items():
            prefix = f"acc/{key}/"
            _restore_obj(obj, {k[len(prefix):]: v for k, v in st.items() if k.startswith(prefix)}, self.path)
        for key, arr in arrays.items():
            saved = st.get(f"arr/{key}")
            if saved is None or saved.shape != np.shape(arr):
                raise ScopeError(f"{self.path}: the saved state does not match this run; run without --resume")
            arr[...] = saved

    def extra(self, key: str):
        return None if self.loaded is None else self.loaded.get(f"extra/{key}")

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def save(self, batches: int, accumulators: dict, arrays: dict, extra: dict | None = None,
             pass1_done: bool = False) -> None:
        """Write the state atomically (temp file, fsync, replace)."""
        data = {}
        for key, obj in accumulators.items():
            for name, arr in _obj_state(obj).items():
                data[f"acc/{key}/{name}"] = arr
        for key, arr in arrays.items():
            data[f"arr/{key}"] = np.asarray(arr)
        for key, arr in (extra or {}).items():
            data[f"extra/{key}"] = np.asarray(arr)
        meta = {"version": STATE_VERSION, "batches": int(batches), "params": self.params, "pass1_done": pass1_done}
        data["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            np.savez(fh, **data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._last = time.monotonic()

    def remove(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def render_done_keys(existing, layers, settings, fingerprint: str) -> set[tuple[str, int, str, int]]:
    """(layer, unit, objective, diversity_index) already rendered in `existing` with these settings and seeds."""
    from scopecli.render.engine import derive_seed

    done = set()
    if existing is None:
        return done
    for layer in layers:
        if layer not in existing.layers:
            continue
        for v in existing.renders(layer):
            if (v.steps == int(settings.steps) and v.size == int(settings.size) and v.param == settings.param
                    and v.lr == float(settings.lr)
                    and v.seed == derive_seed(settings.seed, fingerprint, layer, v.unit, v.diversity_index)):
                done.add((layer, v.unit, v.objective, v.diversity_index))
    return done


def _pass1_parts(records, stats, extremes, probe_parts, probe_index, ok, sha, width, height, reason):
    import torch

    accs = {}
    for i, r in enumerate(records):
        accs[f"stats{i}"] = stats[r.name]
        accs[f"top{i}"] = extremes[r.name]["top"]
        accs[f"bottom{i}"] = extremes[r.name]["bottom"]
    extra = {"sha256": np.array(sha, dtype=str), "reason": np.array(reason, dtype=str),
             "width": np.array(width, dtype=np.int64), "height": np.array(height, dtype=np.int64),
             "probe_index": np.concatenate(probe_index) if probe_index else np.zeros(0, np.int64)}
    for i, r in enumerate(records):
        parts = probe_parts[r.name]
        extra[f"probe{i}"] = torch.cat(parts).numpy() if parts else np.zeros((0, r.units), np.float16)
    return accs, {"ok": ok}, extra


def save_pass1(ckpt: Pass1Checkpoint | None, batches: int, state: tuple, force: bool = False,
               pass1_done: bool = False) -> None:
    """Called by collect after each pass-1 batch (state: records, stats, extremes, probe_parts, probe_index,
    ok, sha, width, height, reason); writes the sidecar when due."""
    if ckpt is None or not (force or ckpt.due()):
        return
    accs, arrays, extra = _pass1_parts(*state)
    ckpt.save(batches, accs, arrays, extra, pass1_done=pass1_done)


def restore_pass1(ckpt: Pass1Checkpoint | None, state: tuple) -> int:
    """Fill collect's pass-1 state from a loaded sidecar; returns the number of batches already done."""
    import torch

    if ckpt is None or ckpt.loaded is None:
        return 0
    records, stats, extremes, probe_parts, probe_index, ok, sha, width, height, reason = state
    accs, arrays, _ = _pass1_parts(*state)
    ckpt.restore(accs, arrays)
    m = len(sha)
    for key, target, conv in (("sha256", sha, str), ("reason", reason, str), ("width", width, int),
                              ("height", height, int)):
        saved = ckpt.extra(key)
        if saved is None or len(saved) != m:
            raise ScopeError(f"{ckpt.path}: the saved state does not match this run; run without --resume")
        target[:] = [conv(x) for x in saved.tolist()]
    pi = ckpt.extra("probe_index")
    probe_index[:] = [pi] if pi is not None and len(pi) else []
    for i, r in enumerate(records):
        acts = ckpt.extra(f"probe{i}")
        probe_parts[r.name][:] = [torch.from_numpy(np.array(acts))] if acts is not None and len(acts) else []
    return ckpt.start_batch
