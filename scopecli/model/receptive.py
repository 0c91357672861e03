"""What every intermediate tensor of a model means: which axes are batch, channels and the spatial grid,
and the receptive field of its positions, traced analytically in one forward pass.

Why tracing, not names: "any PyTorch vision model" means channels-first CNNs, channels-last blocks
(Swin, ConvNeXt internals), token sequences (ViT, CLIP) and everything in between, under whatever module
names their authors chose. The forward runs under a `TorchFunctionMode` that annotates every tensor
with an `Ann`: for each axis, the factors it is made of (`Atom`: batch, channel, grid rows h, grid
columns w, or other), followed through permute / transpose / reshape / view / flatten (so windows
partitioned and merged back, channel shuffles and token sequences keep their meaning), concatenation
(a class token joins a token axis as a prefix segment), indexing and slicing; plus the receptive field
of the spatial positions, followed through convolutions, pooling and padding, element-wise ops and
norms over channels. Ops that mix positions set the field: mixing over the whole grid (global
attention, softmax or a token-mixing linear over all tokens, global pooling) makes it `GLOBAL`;
mixing within windows, cyclic shifts and ops the tracer does not know make it `UNKNOWN`, and the
layer table then measures the gradient support of a centre position instead of guessing.

Global context that enters through a broadcast gate (squeeze-excitation) or global statistics (group
norm) does not widen the field: the reported field is the local one that dataset-example crops should
cover, and the annotation says `gated`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

from scopecli.core.records import LayerLayout

_ATTR = "_scope_ann"


@dataclass(frozen=True)
class Atom:
    """A factor of a tensor axis: `size` steps of `stride` along `role`: 'n' batch, 'c' channel, 'h'/'w'
    rows/columns of the spatial grid, 'x' anything else (heads, window index, class tokens, size-1 axes)."""

    role: str
    stride: int
    size: int


def _seg_size(seg) -> int:
    n = 1
    for a in seg:
        n *= a.size
    return n


class Field:
    """Receptive field of every spatial position, per axis (h, w), in input pixels; floats for exactness."""

    __slots__ = ("size", "stride", "start")

    def __init__(self, size, stride, start):
        self.size, self.stride, self.start = tuple(size), tuple(stride), tuple(start)

    def window(self, kernel, stride, padding, dilation) -> "Field":
        size = tuple(s + (k - 1) * d * j for s, k, d, j in zip(self.size, kernel, dilation, self.stride))
        start = tuple(a - p * j for a, p, j in zip(self.start, padding, self.stride))
        return Field(size, tuple(j * s for j, s in zip(self.stride, stride)), start)

    @staticmethod
    def union(fields: list["Field"]) -> "Field":
        start = tuple(min(f.start[i] for f in fields) for i in range(2))
        end = tuple(max(f.start[i] + f.size[i] for f in fields) for i in range(2))
        stride = tuple(max(f.stride[i] for f in fields) for i in range(2))
        return Field(tuple(e - s for e, s in zip(end, start)), stride, start)

    def __repr__(self) -> str:
        return f"Field(size={self.size}, stride={self.stride}, start={self.start})"


GLOBAL = "global"  # every position depends on the whole input (global attention or pooling)
UNKNOWN = "unknown"  # an op the tracer cannot follow: measure the gradient support instead


@dataclass(frozen=True)
class Ann:
    """What the tracer knows about one tensor: per-dim axis (a tuple of concatenated segments, each a
    tuple of Atoms, outermost first; None when unknown), the field of its positions, the spatial grid
    its h/w atoms index, and whether global context entered through a gate."""

    axes: tuple
    field: object  # Field | GLOBAL | UNKNOWN
    grid: tuple[int, int]
    gated: bool = False

    @property
    def known(self) -> bool:
        return all(a is not None for a in self.axes)


def _one(role: str, size: int):
    return ((Atom(role, 1, int(size)),),)


def tensors(obj):
    """Every tensor inside a (nested) module output or argument list."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from tensors(item)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if len(v) else (0, 0)
    return (int(v), int(v))


def _arg(args, kwargs, index, name, default):
    if name in kwargs:
        return kwargs[name]
    if len(args) > index:
        return args[index]
    return default


def _dim(d, ndim: int) -> int:
    d = int(d)
    return d + ndim if d < 0 else d


def _spatial(axis) -> list[Atom]:
    return [a for seg in axis for a in seg if a.role in "hw"]


def _channel_like(axis) -> bool:
    return axis is not None and all(a.role in "cx" for seg in axis for a in seg)


def _nchw(ann: Ann | None) -> bool:
    """Dims 2, 3 are the whole grid's rows and columns (what convolutions and pooling expect)."""
    if ann is None or len(ann.axes) != 4 or not ann.known:
        return False
    return ann.axes[2] == _one("h", ann.grid[0]) and ann.axes[3] == _one("w", ann.grid[1])


def _covers_grid(atoms: list[Atom], grid) -> bool:
    """Do these atoms enumerate the whole grid (every row and every column)?"""
    for role, n in (("h", grid[0]), ("w", grid[1])):
        total = 1
        for a in atoms:
            if a.role == role:
                total *= a.size
        if total != n:
            return False
    return True


def _atoms(axes) -> list[Atom] | None:
    """All atoms, row-major; None if an axis is unknown or concatenated (it cannot be reshaped)."""
    out = []
    for axis in axes:
        if axis is None or len(axis) != 1:
            return None
        out.extend(axis[0])
    return out


def _merge(atoms: list[Atom]) -> list[Atom]:
    """Join neighbouring atoms that are one factor split in two (the inverse of a split)."""
    out: list[Atom] = []
    for a in atoms:
        if out and out[-1].role == a.role and out[-1].stride == a.stride * a.size:
            prev = out.pop()
            a = Atom(a.role, a.stride, prev.size * a.size)
        out.append(a)
    return out


def _reshape(axes, new_shape) -> tuple | None:
    """Regroup the atoms into `new_shape`, splitting an atom where a new axis takes part of it;
    None when the factors do not line up (the roles are then unknown). A concatenated axis (class token +
    grid) passes through whole when one new axis of its size lines up with it (Hugging Face attention:
    (N, T, C) -> (N, T, heads, C/heads) and back)."""
    whole = [i for i, a in enumerate(axes) if a is not None and len(a) > 1]
    if not whole:
        return _reshape_atoms(axes, new_shape)
    if any(a is None for a in axes):
        return None
    sizes = [sum(_seg_size(seg) for seg in a) for a in axes]
    new_shape = [int(s) for s in new_shape]
    out, start_in, start_out = [], 0, 0
    for w in whole:
        before = math.prod(sizes[start_in:w])
        j = next((j for j in range(start_out, len(new_shape))
                  if new_shape[j] == sizes[w] and math.prod(new_shape[start_out:j]) == before), None)
        piece = None if j is None else _reshape_atoms(axes[start_in:w], new_shape[start_out:j])
        if piece is None:
            return None
        out += [*piece, axes[w]]
        start_in, start_out = w + 1, j + 1
    piece = _reshape_atoms(axes[start_in:], new_shape[start_out:])
    return None if piece is None else tuple(out + list(piece))


def _reshape_atoms(axes, new_shape) -> tuple | None:
    atoms = _atoms(axes)
    if atoms is None:
        return None
    atoms = [a for a in atoms if a.size != 1]
    out, i = [], 0
    for size in (int(s) for s in new_shape):
        group, need = [], size
        while need > 1:
            if i >= len(atoms):
                return None
            a = atoms[i]
            if a.size <= need:
                if need % a.size:
                    return None
                group.append(a)
                need //= a.size
                i += 1
            else:
                if a.size % need:
                    return None
                inner = a.size // need
                group.append(Atom(a.role, a.stride * inner, need))
                atoms[i] = Atom(a.role, a.stride, inner)
                need = 1
        out.append((tuple(_merge(group)) or (Atom("x", 1, 1),),))
    return tuple(out) if i == len(atoms) else None


def _union(fields) -> object:
    fields = list(fields)
    if not fields or any(f == UNKNOWN for f in fields):
        return UNKNOWN
    if any(f == GLOBAL for f in fields):
        return GLOBAL
    return Field.union(fields) if len(fields) > 1 else fields[0]


def _mixed(ann: Ann, dims) -> object:
    """The field after each position mixes with every position along `dims`."""
    if any(ann.axes[d] is None for d in dims):
        return UNKNOWN
    atoms = [a for d in dims for a in _spatial(ann.axes[d])]
    if not atoms:
        return ann.field
    if ann.field == GLOBAL or _covers_grid(atoms, ann.grid):
        return GLOBAL
    return UNKNOWN  # windowed mixing: a position's field depends on where it sits in its window


def _grid_ann(src: Ann, out: torch.Tensor, field) -> Ann:
    gh, gw = int(out.shape[2]), int(out.shape[3])
    return Ann((src.axes[0], _one("c", out.shape[1]), _one("h", gh), _one("w", gw)), field, (gh, gw), src.gated)


def _lost(anns, t: torch.Tensor) -> Ann:
    """Roles unknown; the field stays global when every input was (e.g. convolutions on a pooled gate)."""
    field = GLOBAL if all(a.field == GLOBAL for a in anns) else UNKNOWN
    return Ann(tuple(None for _ in range(t.dim())), field, anns[0].grid, any(a.gated for a in anns))


_ELEMENTWISE = {
    "add", "sub", "mul", "div", "true_divide", "rsub", "radd", "rmul", "truediv", "floor_divide",
    "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh", "elu",
    "leaky_relu", "mish", "softplus", "prelu", "selu", "celu", "glu", "logsigmoid", "threshold",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "stochastic_depth",
    "clamp", "clip", "clamp_min", "clamp_max", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "pow", "square",
    "masked_fill", "where", "erf", "sin", "cos", "reciprocal", "sign", "floor", "ceil", "round", "logical_not",
    "eq", "ne", "lt", "le", "gt", "ge", "maximum", "minimum", "addcmul", "addcdiv", "lerp", "nan_to_num",
    "batch_norm", "affine_grid_generator", "copy", "fill", "zero", "mul_add",
    "add_", "sub_", "mul_", "div_", "relu_", "clamp_", "hardtanh_", "sigmoid_", "tanh_", "silu_", "gelu_",
    "hardswish_", "hardsigmoid_", "leaky_relu_", "elu_", "masked_fill_", "copy_", "fill_", "zero_",
    "__add__", "__mul__", "__sub__", "__truediv__", "__radd__", "__rmul__", "__rsub__", "__iadd__", "__imul__",
    "__isub__", "__itruediv__", "__neg__", "__pow__", "__rtruediv__",
}
_SAME_LAYOUT = {"contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as",
                "requires_grad_", "cpu", "cuda"}
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "norm", "prod"}


class RoleTracer(TorchFunctionMode):
    """Annotates each op's output with its axis roles and the receptive field of its positions."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tensors((args, kwargs)) if getattr(t, _ATTR, None) is not None]
        if not inputs:
            return out
        outs = list(tensors(out))
        if not outs:
            return out
        try:
            anns = self._propagate(getattr(func, "__name__", ""), args, kwargs, inputs, out, outs[0])
        except Exception:  # the tracer must never break the model's forward: say "unknown" instead
            anns = None
        if not isinstance(anns, list):
            anns = [anns] * len(outs)
        src = [getattr(t, _ATTR) for t in inputs]
        for t, a in zip(outs, anns):
            a = a if a is not None and len(a.axes) == t.dim() else _lost(src, t)
            try:
                setattr(t, _ATTR, a)
            except (AttributeError, RuntimeError):
                pass
        return out

    # ------------------------------------------------------------------------------------------ dispatch
    def _propagate(self, name, args, kwargs, inputs, out, first):
        src: Ann = getattr(inputs[0], _ATTR)
        if name in ("conv2d", "_conv_forward", "convolution", "conv_transpose2d"):
            return self._conv(name, args, kwargs, src, first)
        if name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d"):
            return self._pool(name, args, kwargs, src, first)
        if name.startswith("adaptive_"):
            return self._adaptive(src, inputs[0], first)
        if name == "pad":
            return self._pad(args, kwargs, src, inputs[0], first)
        if name in ("interpolate", "upsample", "upsample_bilinear2d", "upsample_nearest2d"):
            return self._resize(src, inputs[0], first)
        if name in ("permute", "transpose", "swapaxes", "swapdims", "t", "movedim", "moveaxis"):
            return self._permute(name, args, kwargs, src, first)
        if name in _SAME_LAYOUT:
            return src if tuple(first.shape) == tuple(inputs[0].shape) else None
        if name in _RESHAPES:
            if tuple(first.shape) == tuple(inputs[0].shape):
                return src
            axes = _reshape(src.axes, first.shape)
            return None if axes is None else Ann(axes, src.field, src.grid, src.gated)
        if name in ("expand", "expand_as", "repeat", "broadcast_to"):
            return src if tuple(first.shape) == tuple(inputs[0].shape) else None
        if name in ("cat", "concat", "concatenate", "stack"):
            return self._cat(name, args, kwargs, first)
        if name in ("chunk", "split", "unbind", "tensor_split", "split_with_sizes"):
            return self._chunk(name, args, kwargs, src, inputs[0], out)
        if name == "__getitem__":
            return self._getitem(args, src, inputs[0], first)
        if name in ("layer_norm", "group_norm", "instance_norm", "normalize", "rms_norm", "local_response_norm"):
            return self._norm(name, args, kwargs, src, inputs[0])
        if name == "linear":
            return self._linear(src, first)
        if name in ("matmul", "bmm", "baddbmm", "mm", "__matmul__"):
            return self._matmul(name, args, first)
        if name == "einsum":
            return self._einsum(args, first)
        if name in ("softmax", "log_softmax", "_softmax"):
            d = _dim(_arg(args, kwargs, 1, "dim", -1), inputs[0].dim())
            return Ann(src.axes, _mixed(src, [d]), src.grid, src.gated)
        if name in _REDUCTIONS:
            return self._reduce(args, kwargs, src, inputs[0], first)
        if name == "multi_head_attention_forward":  # (L, N, E) query/key/value; output (attn, weights)
            return self._attention(args, 0, out)
        if name == "scaled_dot_product_attention":
            return self._attention(args, -2, out)
        if name == "roll":  # cyclic shift (Swin): positions near the border wrap to the other side
            return Ann(src.axes, UNKNOWN, src.grid, src.gated)
        if name in _ELEMENTWISE or name.startswith("__"):
            return self._elementwise(inputs, first)
        if tuple(first.shape) == tuple(inputs[0].shape) and _nchw(src):  # an unknown per-position op on a
            return self._elementwise(inputs, first)  # channels-first grid (as 0.1 assumed for every op)
        if tuple(first.shape) == tuple(inputs[0].shape):
            return Ann(src.axes, UNKNOWN, src.grid, src.gated)  # keep the roles, measure the field
        return None

    # ------------------------------------------------------------------------------------------ grid ops
    def _conv(self, name, args, kwargs, src, first):
        if not _nchw(src) or first.dim() != 4:
            return None
        weight = _arg(args, kwargs, 1, "weight", None)
        kernel = tuple(weight.shape[-2:]) if isinstance(weight, torch.Tensor) else (1, 1)
        stride = _pair(_arg(args, kwargs, 3, "stride", 1))
        dilation = _pair(_arg(args, kwargs, 5, "dilation", 1))
        padding = _arg(args, kwargs, 4, "padding", 0)
        if isinstance(padding, str):  # 'same': total padding d*(k-1), the smaller half on the leading side
            padding = (0, 0) if padding == "valid" else tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        if name == "conv_transpose2d" or not isinstance(src.field, Field):
            return _grid_ann(src, first, src.field if name != "conv_transpose2d" else UNKNOWN)
        return _grid_ann(src, first, src.field.window(kernel, stride, _pair(padding), dilation))

    def _pool(self, name, args, kwargs, src, first):
        if not _nchw(src) or first.dim() != 4:
            return None
        if name == "lp_pool2d":
            kernel = _pair(_arg(args, kwargs, 2, "kernel_size", 1))
            stride = _arg(args, kwargs, 3, "stride", None)
            padding, dilation = (0, 0), (1, 1)
        else:
            kernel = _pair(_arg(args, kwargs, 1, "kernel_size", 1))
            stride = _arg(args, kwargs, 2, "stride", None)
            padding = _pair(_arg(args, kwargs, 3, "padding", 0))
            dilation = _pair(_arg(args, kwargs, 4, "dilation", 1)) if name.startswith("max") else (1, 1)
        stride = kernel if stride in (None, [], ()) else _pair(stride)
        field = src.field.window(kernel, stride, padding, dilation) if isinstance(src.field, Field) else src.field
        return _grid_ann(src, first, field)

    def _adaptive(self, src, inp, first):
        if not _nchw(src) or first.dim() != 4:
            return None
        in_hw, out_hw = tuple(inp.shape[-2:]), tuple(first.shape[-2:])
        if out_hw == (1, 1) and in_hw != (1, 1):  # global pooling: one position that sees everything
            return Ann(src.axes[:2] + (_one("x", 1), _one("x", 1)), GLOBAL, src.grid, src.gated)
        if not isinstance(src.field, Field):
            return _grid_ann(src, first, src.field)
        kernel = tuple(math.ceil(i / o) for i, o in zip(in_hw, out_hw))
        stride = tuple(max(i // o, 1) for i, o in zip(in_hw, out_hw))
        return _grid_ann(src, first, src.field.window(kernel, stride, (0, 0), (1, 1)))

    def _pad(self, args, kwargs, src, inp, first):
        if tuple(first.shape) == tuple(inp.shape):
            return src
        if not (_nchw(src) and first.dim() == 4):  # padding a channels-last or partitioned tensor
            return Ann(tuple(a if d == e else None for a, d, e in zip(src.axes, inp.shape, first.shape)),
                       UNKNOWN, src.grid, src.gated)
        pad = list(_arg(args, kwargs, 1, "pad", ())) + [0, 0, 0, 0]
        if not isinstance(src.field, Field):
            return _grid_ann(src, first, src.field)
        left, top = pad[0], pad[2]
        f = src.field
        return _grid_ann(src, first, Field(f.size, f.stride, (f.start[0] - top * f.stride[0], f.start[1] - left * f.stride[1])))

    def _resize(self, src, inp, first):
        if not _nchw(src) or first.dim() != 4:
            return None
        if not isinstance(src.field, Field):
            return _grid_ann(src, first, src.field)
        scale = tuple(i / o for i, o in zip(inp.shape[-2:], first.shape[-2:]))
        return _grid_ann(src, first, Field(src.field.size, tuple(j * s for j, s in zip(src.field.stride, scale)),
                                           src.field.start))

    # ------------------------------------------------------------------------------------------ axes ops
    def _permute(self, name, args, kwargs, src, first):
        n = len(src.axes)
        order = list(range(n))
        if name == "permute":
            dims = args[1:] if len(args) > 1 and not isinstance(args[1], (list, tuple)) else _arg(args, kwargs, 1, "dims", ())
            order = [_dim(d, n) for d in dims]
        elif name == "t":
            order = order[::-1]
        elif name in ("movedim", "moveaxis"):
            s, d = _arg(args, kwargs, 1, "source", 0), _arg(args, kwargs, 2, "destination", 0)
            s, d = ([s], [d]) if isinstance(s, int) else (list(s), list(d))
            s, d = [_dim(x, n) for x in s], [_dim(x, n) for x in d]
            rest = [i for i in order if i not in s]
            order = [None] * n
            for a, b in zip(s, d):
                order[b] = a
            it = iter(rest)
            order = [o if o is not None else next(it) for o in order]
        else:
            d0 = _dim(_arg(args, kwargs, 1, "dim0", 0), n)
            d1 = _dim(_arg(args, kwargs, 2, "dim1", 1), n)
            order[d0], order[d1] = order[d1], order[d0]
        if sorted(order) != list(range(n)):
            return None
        return Ann(tuple(src.axes[d] for d in order), src.field, src.grid, src.gated)

    def _cat(self, name, args, kwargs, first):
        tensors_in = list(_arg(args, kwargs, 0, "tensors", ()))
        anns = [getattr(t, _ATTR, None) for t in tensors_in]
        base = next(a for a in anns if a is not None)
        fields = [a.field for a in anns if a is not None]
        gated = any(a.gated for a in anns if a is not None)
        d = _dim(_arg(args, kwargs, 1, "dim", 0), first.dim())
        if name == "stack":  # a new axis of entries (other)
            axes = list(base.axes)
            axes.insert(d, _one("x", len(tensors_in)))
            return Ann(tuple(axes), _union(fields), base.grid, gated)
        segs = []
        for t, a in zip(tensors_in, anns):
            if a is None:  # e.g. a class token parameter joins the token axis: non-spatial entries
                segs.append((Atom("x", 1, int(t.shape[d])),))
            elif a.axes[d] is None or len(a.axes) != first.dim():
                return None
            else:
                segs.extend(a.axes[d])
        axes = list(base.axes)
        if all(a.role in "cx" for s in segs for a in s):
            has_c = any(a.role == "c" for s in segs for a in s)
            axes[d] = _one("c" if has_c else "x", first.shape[d])  # channels joined: one channel axis
        else:
            axes[d] = tuple(segs)
        return Ann(tuple(axes), _union(fields), base.grid, gated)

    def _chunk(self, name, args, kwargs, src, inp, out):
        dim = _dim(_arg(args, kwargs, 1 if name == "unbind" else 2, "dim", 0), inp.dim())
        res = []
        for t in tensors(out):
            if name == "unbind":
                res.append(Ann(src.axes[:dim] + src.axes[dim + 1:], src.field, src.grid, src.gated)
                           if _channel_like(src.axes[dim]) else None)
                continue
            axes = list(src.axes)
            if t.shape[dim] != inp.shape[dim]:
                axes[dim] = _one("c", t.shape[dim]) if _channel_like(axes[dim]) else None
            res.append(Ann(tuple(axes), src.field, src.grid, src.gated))
        return res

    def _getitem(self, args, src, inp, first):
        idx = args[1] if len(args) > 1 else None
        idx = idx if isinstance(idx, tuple) else (idx,)
        axes, d = [], 0
        field, grid = src.field, list(src.grid)
        for pos, it in enumerate(idx):
            if it is Ellipsis:
                rest = inp.dim() - d - sum(1 for x in idx[pos + 1:] if x is not None)
                axes.extend(src.axes[d:d + rest])
                d += rest
                continue
            if it is None:
                axes.append(_one("x", 1))
                continue
            ax = src.axes[d] if d < len(src.axes) else None
            n = int(inp.shape[d])
            if isinstance(it, int):
                # one entry of a non-spatial axis or of a concatenated one (the class token): the axis goes;
                # one row or column of the grid: the positions are lost
                if ax is None or (len(ax) == 1 and _spatial(ax)):
                    return None
                d += 1
                continue
            if not isinstance(it, slice):
                return None
            start, stop, step = it.indices(n)
            if (start, stop, step) == (0, n, 1):
                axes.append(ax)
            elif ax is not None and len(ax) > 1 and step == 1:  # whole segments (drop the class token: x[:, 1:])
                keep, at = [], 0
                for seg in ax:
                    size = _seg_size(seg)
                    if start <= at and at + size <= stop:
                        keep.append(seg)
                    elif not (at + size <= start or at >= stop):
                        return None
                    at += size
                if not keep:
                    return None
                axes.append(tuple(keep))
            elif _channel_like(ax):
                axes.append(_one("c" if any(a.role == "c" for s in ax for a in s) else "x", len(range(start, stop, step))))
            elif ax is not None and len(ax) == 1 and len(ax[0]) == 1 and ax[0][0].role in "hw" and ax[0][0].stride == 1:
                # a strided sub-grid (Swin's patch merging takes x[:, 0::2, 0::2] and friends)
                i = "hw".index(ax[0][0].role)
                m = len(range(start, stop, step))
                grid[i] = m
                axes.append(_one(ax[0][0].role, m))
                if isinstance(field, Field):
                    st = list(field.start)
                    stride = list(field.stride)
                    st[i] += start * stride[i]
                    stride[i] *= step
                    field = Field(field.size, stride, st)
            else:
                return None
            d += 1
        axes.extend(src.axes[d:])
        if tuple(grid) != tuple(src.grid):  # the grid shrank: every full h/w atom refers to the new grid
            axes = [None if ax is None else tuple(
                tuple(Atom(a.role, 1, grid["hw".index(a.role)]) if a.role in "hw" and a.stride == 1
                      and a.size == src.grid["hw".index(a.role)] else a for a in seg) for seg in ax) for ax in axes]
        return Ann(tuple(axes), field, tuple(grid), src.gated)

    # ------------------------------------------------------------------------------------------ mixing ops
    def _norm(self, name, args, kwargs, src, inp):
        if name == "layer_norm":
            shape = _arg(args, kwargs, 1, "normalized_shape", ())
            k = len(shape) if isinstance(shape, (list, tuple)) else 1
            dims = list(range(inp.dim() - k, inp.dim()))
            if all(_channel_like(src.axes[d]) for d in dims):
                return src  # per position, over channels (LayerNorm2d, ViT/Swin norms): no spatial mixing
            return Ann(src.axes, _mixed(src, dims), src.grid, src.gated)
        if name in ("normalize", "rms_norm", "local_response_norm"):
            return src
        return Ann(src.axes, src.field, src.grid, True)  # group/instance norm: grid statistics, like a gate

    def _linear(self, src, first):
        last = src.axes[-1]
        if last is None:
            return None
        if _spatial(last):  # a linear over positions (MLP-Mixer token mixing)
            return Ann(src.axes[:-1] + (_one("x", first.shape[-1]),), _mixed(src, [len(src.axes) - 1]), src.grid,
                       src.gated)
        return Ann(src.axes[:-1] + (_one("c", first.shape[-1]),), src.field, src.grid, src.gated)

    def _matmul(self, name, args, first):
        ops = args[1:3] if name == "baddbmm" else args[:2]
        a, b = (getattr(t, _ATTR, None) if isinstance(t, torch.Tensor) else None for t in ops)
        base = a or b
        if base is None:
            return None
        fields, gated = [], False
        if a is not None:
            fields.append(_mixed(a, [len(a.axes) - 1]))
            gated |= a.gated
        if b is not None and len(b.axes) >= 2:
            fields.append(_mixed(b, [len(b.axes) - 2]))
            gated |= b.gated
        rows = a.axes[:-1] if a is not None else (None,) * (first.dim() - 1)
        cols = (b.axes[-1],) if b is not None else (None,)
        axes = tuple(rows) + cols
        if len(axes) != first.dim():
            axes = (None,) * first.dim()
        return Ann(axes, _union(fields), base.grid, gated)

    def _einsum(self, args, first):
        eq = args[0] if args and isinstance(args[0], str) else None
        if eq is None or "..." in eq or "->" not in eq:
            return None
        ops = args[1:]
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = ops[0]
        lhs, rhs = eq.replace(" ", "").split("->")
        labels, fields, gated, grid = {}, [], False, None
        for term, t in zip(lhs.split(","), ops):
            ann = getattr(t, _ATTR, None) if isinstance(t, torch.Tensor) else None
            if ann is None:
                continue
            grid = ann.grid
            gated |= ann.gated
            fields.append(_mixed(ann, [i for i, ch in enumerate(term) if ch not in rhs]))
            for ch, ax in zip(term, ann.axes):
                labels.setdefault(ch, ax)
        if grid is None:
            return None
        return Ann(tuple(labels.get(ch) for ch in rhs), _union(fields), grid, gated)

    def _attention(self, args, key_dim, out):
        q = getattr(args[0], _ATTR, None)
        k = getattr(args[1], _ATTR, None) if len(args) > 1 else None
        if q is None or k is None:
            return None
        ann = Ann(q.axes, _union([_mixed(k, [_dim(key_dim, len(k.axes))]), q.field]), q.grid, q.gated or k.gated)
        return [ann] + [None] * (len(list(tensors(out))) - 1)

    def _reduce(self, args, kwargs, src, inp, first):
        dims = _arg(args, kwargs, 1, "dim", None)
        if dims is None:
            return Ann((None,) * first.dim(), GLOBAL, src.grid, src.gated)
        dims = [_dim(d, inp.dim()) for d in ([dims] if isinstance(dims, int) else list(dims))]
        keep = bool(_arg(args, kwargs, 2, "keepdim", False))
        field = src.field
        spatial = [d for d in dims if src.axes[d] is None or _spatial(src.axes[d])]
        if spatial:
            atoms = [a for d in spatial if src.axes[d] is not None for a in _spatial(src.axes[d])]
            field = GLOBAL if _covers_grid(atoms, src.grid) else UNKNOWN
        if keep:
            axes = tuple(_one("x", 1) if d in dims else a for d, a in enumerate(src.axes))
        else:
            axes = tuple(a for d, a in enumerate(src.axes) if d not in dims)
        return Ann(axes, field, src.grid, src.gated)

    def _elementwise(self, inputs, first):
        anns = [getattr(t, _ATTR) for t in inputs]
        full = [a for t, a in zip(inputs, anns) if tuple(t.shape) == tuple(first.shape)]
        if not full:
            return None
        local, gated = [], any(a.gated for a in anns)
        for t, a in zip(inputs, anns):
            broadcast = tuple(t.shape) != tuple(first.shape)
            if broadcast and a.field == GLOBAL:
                gated = True  # global context broadcast onto the grid (a squeeze-excitation gate)
            else:
                local.append(a.field)
        return Ann(full[0].axes, _union(local), full[0].grid, gated)


@contextmanager
def tracing(x: torch.Tensor):
    """Mark `x` (N, 3, H, W) as the model input (each position sees one pixel) and follow the ops run inside."""
    n, c, h, w = x.shape
    setattr(x, _ATTR, Ann((_one("n", n), _one("c", c), _one("h", h), _one("w", w)), Field((1, 1), (1, 1), (0, 0)), (h, w)))
    with RoleTracer():
        yield


def annotation(t: torch.Tensor) -> Ann | None:
    """What the tracer found about a tensor (None when no traced op produced it)."""
    return getattr(t, _ATTR, None)


def layout_of(ann: Ann | None, t: torch.Tensor) -> LayerLayout | None:
    """The unit layout of a module's output from its axis roles (None: not addressable as units x positions)."""
    if ann is None or not ann.known or t.dim() < 2:
        return None
    roles = [{a.role for seg in ax for a in seg if a.size > 1 or a.role != "x"} for ax in ann.axes]
    batch = [d for d, r in enumerate(roles) if "n" in r]
    if len(batch) != 1 or roles[batch[0]] != {"n"}:
        if not (t.shape[0] == 1 and roles[0] <= {"x"}):
            return None
        batch = [0]
    b = batch[0]
    rest = [d for d in range(t.dim()) if d != b]
    chans = [d for d in rest if roles[d] == {"c"}]
    others = [d for d in rest if d not in chans]
    if len(chans) != 1:
        return None
    c = chans[0]
    gated = ann.gated
    if all(roles[d] <= {"x"} for d in others):  # no grid left: one vector per image
        if any(int(t.shape[d]) != 1 for d in others):
            return None
        field = "global" if ann.field == GLOBAL or ann.field == UNKNOWN else "local"
        return LayerLayout("vector", (b, c) + tuple(others), (1, 1), 0, field, gated)
    gh, gw = ann.grid
    field = {GLOBAL: "global", UNKNOWN: "measured"}.get(ann.field, "local") if not isinstance(ann.field, Field) else "local"
    if len(others) == 2:
        hd, wd = others
        if ann.axes[hd] == _one("h", gh) and ann.axes[wd] == _one("w", gw):
            kind = {(1, 2, 3): "nchw", (3, 1, 2): "nhwc"}.get((c, hd, wd))
            if kind is None:
                return None
            return LayerLayout(kind, (b, c, hd, wd), (gh, gw), 0, field, gated)
        return None
    if len(others) == 1:
        d = others[0]
        prefix, grid_seen = 0, False
        for seg in ann.axes[d]:
            atoms = [a for a in seg if a.size > 1]
            if atoms == [Atom("h", 1, gh), Atom("w", 1, gw)] or (gh == 1 and atoms == [Atom("w", 1, gw)]) \
                    or (gw == 1 and atoms == [Atom("h", 1, gh)]):
                if grid_seen:
                    return None
                grid_seen = True
            elif not grid_seen and all(a.role == "x" for a in seg):
                prefix += _seg_size(seg)
            else:
                return None  # tokens after the grid, or a partitioned axis
        if not grid_seen:
            return None
        return LayerLayout("tokens", (b, c, d), (gh, gw), prefix, field, gated)
    return None


def field_ints(ann: Ann | None, layout: LayerLayout, input_size: int) -> tuple[int, int, int]:
    """(size, stride, start) in whole input pixels for a traced local field; for global, measured or
    unknown fields the whole input, with the grid's stride (measured fields are filled in by the caller)."""
    if ann is not None and isinstance(ann.field, Field):
        f = ann.field
        return int(round(max(f.size))), max(int(round(max(f.stride))), 1), int(math.floor(min(f.start)))
    gh, gw = layout.grid
    return int(input_size), max(1, int(round(input_size / max(gh, gw, 1)))), 0
