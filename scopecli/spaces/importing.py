"""Import someone else's dictionary as a unit space: .safetensors, .npz or .npy; never a pickle.

Key mapping (.safetensors and .npz; the state-dict names SAELens and saev save):

    W_enc  [C, k] (d_in x d_sae)   -> encoder = W_enc transposed   (a [k, C] matrix is taken as is when C != k)
    b_enc  [k]                     -> bias                         (zeros when absent)
    W_dec  [k, C] (d_sae x d_in)   -> decoder                      (a [C, k] matrix is transposed when C != k)
    b_dec  [C]                     -> pre_bias                     (zeros when absent)

so z = f(W_encᵀ (x - b_dec) + b_enc), x_hat = b_dec + z W_dec: SAELens' standard SAE, which subtracts
b_dec before encoding. saev encodes x without subtracting b_dec: with `subtract_b_dec=False` the bias
becomes b_enc + W_encᵀ b_dec, which is the same function. Only W_dec (directions) or only W_enc: the other
is its transpose (tied). A .npy file is one matrix of directions [k, C] (or [C, k]): encoder = decoder =
that matrix, no biases. JumpReLU SAEs (a `threshold` key) are refused: their nonlinearity is not one of
none, relu, topk. Files are read with np.load(allow_pickle=False) and safetensors, which cannot run code;
.pt/.pth/.pkl/.ckpt/.bin are refused (a pickle can run code when loaded).
"""

from __future__ import annotations

import os

import numpy as np

from scopecli.core.errors import ScopeError

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib")
KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _load_arrays(path: str) -> dict[str, np.ndarray]:
    low = path.lower()
    if low.endswith(PICKLE_SUFFIXES):
        raise ScopeError(f"refusing {path}: pickle files ({', '.join(PICKLE_SUFFIXES[:3])}, …) can run code when "
                         "loaded; save the weights as .safetensors or .npz (keys W_enc, b_enc, W_dec, b_dec)")
    if not os.path.isfile(path):
        raise ScopeError(f"{path}: no such file")
    try:
        if low.endswith(".safetensors"):
            from safetensors.numpy import load_file

            return dict(load_file(path))
        if low.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if low.endswith(".npy"):
            return {"directions": np.load(path, allow_pickle=False)}
    except ScopeError:
        raise
    except ImportError:
        raise ScopeError(f"reading {path} needs the safetensors package: pip install 'scopecli[safetensors]'") from None
    except Exception as exc:  # any reader error of a damaged file is the user's file, said in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "pickle" in first.lower():
            raise ScopeError(f"refusing {path}: it holds pickled objects, which scope never loads") from None
        raise ScopeError(f"{path}: unreadable dictionary ({first})") from None
    raise ScopeError(f"{path}: import .safetensors, .npz or .npy (keys W_enc, b_enc, W_dec, b_dec)")


def _matrix(a: np.ndarray, key: str, path: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "fiu" or a.ndim != 2:
        raise ScopeError(f"{path}: {key} must be a 2-D numeric matrix, found {a.dtype} {a.shape}")
    return a.astype(np.float64)


def _vector(a: np.ndarray, key: str, path: str, n: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "fiu" or a.shape != (n,):
        raise ScopeError(f"{path}: {key} must be a vector of {n} numbers, found {a.dtype} {a.shape}")
    return a.astype(np.float64)


def _orient(m: np.ndarray, c: int, want_rows_k: bool, key: str, path: str, width_hint: str) -> np.ndarray:
    """m as [k, C]: from [C, k] (transposed) or [k, C]; a width that matches neither side is refused."""
    if want_rows_k and m.shape[1] == c:
        return m
    if m.shape[0] == c:
        return m.T
    if m.shape[1] == c:
        return m
    raise ScopeError(f"{path}: {key} has shape {m.shape}, but {width_hint} has {c} channels: this dictionary was "
                     "made for another layer")


def read_dictionary(path: str, width: int, layer: str, subtract_b_dec: bool = True) -> dict:
    """encoder [k, C], pre_bias [C], bias [k], decoder [k, C] (float32) and the mapping used, from a file."""
    arrays = _load_arrays(path)
    if "threshold" in arrays:
        raise ScopeError(f"{path}: a JumpReLU SAE (it has a 'threshold'); scope spaces use none, relu or topk")
    for key, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ScopeError(f"{path}: {key} holds NaN or infinite values")
    hint = f"layer {layer}"
    if "directions" in arrays:  # a .npy of directions
        d = _orient(_matrix(arrays["directions"], "the matrix", path), width, True, "the matrix", path, hint)
        k = d.shape[0]
        return {"encoder": d.astype(np.float32), "decoder": d.astype(np.float32), "pre_bias": np.zeros(width, np.float32),
                "bias": np.zeros(k, np.float32), "mapping": "npy: directions [k, C] = encoder = decoder"}
    if "W_enc" not in arrays and "W_dec" not in arrays:
        raise ScopeError(f"{path}: no W_enc or W_dec (found {', '.join(sorted(arrays)) or 'nothing'}); "
                         f"keys are {', '.join(KEYS)}")
    enc = _orient(_matrix(arrays["W_enc"], "W_enc", path), width, False, "W_enc", path, hint) if "W_enc" in arrays else None
    dec = _orient(_matrix(arrays["W_dec"], "W_dec", path), width, True, "W_dec", path, hint) if "W_dec" in arrays else None
    enc = dec if enc is None else enc
    dec = enc if dec is None else dec
    if enc.shape != dec.shape:
        raise ScopeError(f"{path}: W_enc gives {enc.shape[0]} latents and W_dec {dec.shape[0]}")
    k = enc.shape[0]
    b_enc = _vector(arrays["b_enc"], "b_enc", path, k) if "b_enc" in arrays else np.zeros(k)
    b_dec = _vector(arrays["b_dec"], "b_dec", path, width) if "b_dec" in arrays else np.zeros(width)
    bias = b_enc if subtract_b_dec else b_enc + enc @ b_dec
    mapping = ("encoder = W_enc^T, bias = b_enc, decoder = W_dec, pre_bias = b_dec (b_dec subtracted before encoding)"
               if subtract_b_dec else
               "encoder = W_enc^T, bias = b_enc + W_enc^T b_dec, decoder = W_dec, pre_bias = b_dec (x encoded as is)")
    return {"encoder": enc.astype(np.float32), "decoder": dec.astype(np.float32), "pre_bias": b_dec.astype(np.float32),
            "bias": bias.astype(np.float32), "mapping": mapping, "ignored": sorted(set(arrays) - set(KEYS))}
