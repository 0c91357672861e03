"""In-memory records that the engines produce and the artifact stores.

This is the contract between the engines (`render`, `collect`, `spaces`, `compare`), the views (caricature,
atlas, circuits) and `artifact`: producers fill these without importing the artifact, the artifact writer
stores them, the reader hands them back. Every such record lives here. Arrays are plain numpy (no objects).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass
from functools import cached_property

import numpy as np

# Quantiles every statistics block reports (p50, p90, p99, p99.9).
QUANTILES = (0.5, 0.9, 0.99, 0.999)


LAYOUTS = ("nchw", "nhwc", "tokens", "vector")
FIELDS = ("local", "measured", "global")


@dataclass(frozen=True)
class LayerLayout:
    """How a layer's output tensor maps to units x positions, found by tracing the model (not by names).

    kind: nchw (channels first), nhwc (channels last: Swin, ConvNeXt internals), tokens (N x T x D: ViT,
    CLIP; `prefix` class/register tokens come before the grid and stay out of it), vector (N x D).
    perm: the output's dims in (batch, channel, spatial...) order (tokens: batch, channel, token).
    grid: (rows, columns) of positions; (1, 1) for vectors.
    field: what the layer record's rf_* numbers are: "local" (traced exactly), "measured" (the gradient
    support of the centre position, where the tracer cannot follow, e.g. windowed attention), or
    "global" (every position sees the whole input: global attention; rf_* then span the input).
    global_context: a global gate or statistic also enters (squeeze-excitation, ...): the rf_* window is
    the local path that crops use.
    """

    kind: str
    perm: tuple[int, ...]
    grid: tuple[int, int]
    prefix: int = 0
    field: str = "local"
    global_context: bool = False

    @staticmethod
    def implied(shape) -> "LayerLayout":
        """The layout of a layer stored before layouts were recorded (format 1.0): channels first."""
        c, h, w = (int(x) for x in shape)
        if (h, w) == (1, 1):
            return LayerLayout("vector", (0, 1), (1, 1))
        return LayerLayout("nchw", (0, 1, 2, 3), (h, w))

    def describe(self) -> str:
        """Short text for tables: nchw 14x14, tokens 1+14x14, vector."""
        if self.kind == "vector":
            return "vector"
        grid = f"{self.grid[0]}x{self.grid[1]}"
        return f"tokens {self.prefix}+{grid}" if self.kind == "tokens" and self.prefix else f"{self.kind} {grid}"


@dataclass
class LayerRecord:
    """What a layer is: its dotted PyTorch name, unit count, output shape, layout and receptive field.

    Receptive field of activation-grid position (y, x) in model-input pixels:
    rows [rf_start + y*rf_stride, rf_start + y*rf_stride + rf_size), same for columns.
    """

    name: str
    units: int
    shape: tuple[int, int, int]  # (C, grid rows, grid columns) at the model's input size; (C, 1, 1) for vectors
    rf_size: int
    rf_stride: int
    rf_start: int
    layout: LayerLayout | None = None  # None: stored before layouts were recorded (see `effective_layout`)

    @property
    def effective_layout(self) -> LayerLayout:
        return self.layout if self.layout is not None else LayerLayout.implied(self.shape)


def space_layout(base: LayerLayout) -> LayerLayout:
    """The layout of a unit space's output on a layer of layout `base`: the encoder runs on the layer's
    canonical (batch, channel, positions...) view with class tokens dropped, so the space is channels first
    (nchw), a token sequence without prefix (tokens), or a vector, on the same grid and field."""
    if base.kind == "vector":
        return LayerLayout("vector", (0, 1), (1, 1), 0, base.field, base.global_context)
    if base.kind == "tokens":
        return LayerLayout("tokens", (0, 1, 2), tuple(base.grid), 0, base.field, base.global_context)
    return LayerLayout("nchw", (0, 1, 2, 3), tuple(base.grid), 0, base.field, base.global_context)


def space_record(base: "LayerRecord", name: str, k: int) -> "LayerRecord":
    """The layer record of a unit space with k units on layer `base` (named `name`: BASE@SPACE): the base's
    grid and receptive field, k units, the space layout."""
    return LayerRecord(name=name, units=int(k), shape=(int(k), int(base.shape[1]), int(base.shape[2])),
                       rf_size=base.rf_size, rf_stride=base.rf_stride, rf_start=base.rf_start,
                       layout=space_layout(base.effective_layout))


PNG = "png"  # Column.dtype of an image: HxWx3 uint8 in a record, PNG bytes in a stored row
TRACE = "trace"  # Column.dtype of a float32 vector per row (stored concatenated, with offsets)
REQUIRED = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()  # Column.default: none


@dataclass(frozen=True)
class Column:
    """One per-row column of a stored table, declared once: the record's field, the reader's view, the
    writer's row and the stored dataset (name, dtype, place) all follow from a tuple of these."""

    name: str
    dtype: object  # numpy scalar type of the stored dataset, str (UTF-8 strings), PNG or TRACE
    meaning: str
    default: object = REQUIRED  # the record's default; a column added after 1.0: what older files read as
    since: str = "1.0"  # the format version that added it (older files lack it)
    key: bool = False  # part of the row key (rows are unique and sorted by it)
    derived: bool = False  # not in the record: the writer derives it from the image (its height, width)

    @cached_property  # worked out once: a unit read converts every column of its rows
    def py(self) -> type:
        """The Python type of one value (what views and stored rows hold)."""
        if self.dtype in (PNG, TRACE):
            return np.ndarray
        if self.dtype is str:
            return str
        return int if np.dtype(self.dtype).kind in "iu" else float

    def convert(self, value):
        """`value` as this column holds it (a TRACE: a flat float32 vector)."""
        if self.dtype == TRACE:
            return np.asarray(value, np.float32).reshape(-1)
        return self.py(value)


def column_fields(columns, image: str | None, derived: bool) -> list[tuple]:
    """make_dataclass fields for `columns`: the PNG column named `image` (None: left out, as bytes when
    `image` is 'png'), the derived columns only when `derived`."""
    out = []
    for c in columns:
        if (c.derived and not derived) or (c.dtype == PNG and image is None):
            continue
        name, py = (image, bytes if image == "png" else np.ndarray) if c.dtype == PNG else (c.name, c.py)
        out.append((name, py) if c.default is REQUIRED else (name, py, field(default=c.default)))
    return out


def record_class(name: str, columns, doc: str) -> type:
    """The dataclass an engine fills for one row of `columns` (no derived columns, the image as pixels)."""
    cls = make_dataclass(name, column_fields(columns, "image", False), namespace={"__doc__": doc})
    cls.__module__ = __name__
    return cls


# The metadata of one render, in record order (RenderRecord's positional order, stored row and view).
RENDER_COLUMNS = (
    Column("unit", np.int64, "the unit rendered; -1: the whole layer (deepdream)", key=True),
    Column("objective", str, "a registered --objective (scopecli/render/objectives.py: channel, neuron, negative, "
           "deepdream, direction, direction-cos), `KIND@POSITION` for a positioned one (neuron@cls)", key=True),
    Column("diversity_index", np.int32, "0 unless --diversity K, then 0..K-1", key=True),
    Column("image", PNG, "the rendered picture"),
    Column("height", np.int32, "the image's height in pixels", derived=True),
    Column("width", np.int32, "the image's width in pixels", derived=True),
    Column("seed", np.int64, "the derived per-unit seed actually used"),
    Column("steps", np.int32, "optimisation steps"),
    Column("size", np.int32, "the render's side in pixels"),
    Column("param", str, "the image parameterisation: fft | pixel | maco"),
    Column("lr", np.float64, "learning rate"),
    Column("act_final", np.float64, "objective activation on the untransformed image"),
    Column("act_robust", np.float64, "mean activation under 16 random transforms"),
    Column("act_trace", TRACE, "activation every 32 steps"),
    Column("time_s", np.float64, "seconds the render took"),
    Column("dataset_max_ratio", np.float64, "act_final / dataset max, when stats exist", default=math.nan),
    Column("schedule", str, "optimisation schedule (scopecli/render/schedule.py)", default="lucid", since="1.1"),
)

RenderRecord = record_class("RenderRecord", RENDER_COLUMNS,
                            "One optimized image for one unit (or one layer, for deepdream: unit = -1); "
                            "its fields are RENDER_COLUMNS.")


@dataclass
class ImageTable:
    """The images a collect run saw, in deterministic (sorted relative path) order."""

    paths: list[str]  # relative POSIX paths, UTF-8
    sha256: list[str]  # hex digests of the file bytes
    width: np.ndarray  # int32 [N], original size
    height: np.ndarray  # int32 [N]
    label: np.ndarray  # int32 [N], -1 when unknown
    class_names: list[str]  # label index -> name
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    source: np.ndarray | None = None  # int32 [N]: source group (index into source_names), -1 = its own
    source_names: list[str] = field(default_factory=list)  # e.g. the photo that crops and mirrors came from
    pixel_mean: np.ndarray | None = None  # float64 [C] (1.2): mean of the model-input pixels in [0, 1], per channel
    pixel_cov: np.ndarray | None = None  # float64 [C, C] (1.2): their channel covariance (N-channel colour decorrelation)

    def __len__(self) -> int:
        return len(self.paths)

    def groups(self) -> np.ndarray:
        """int64 [N]: one id per source group; an image without a group is a group of its own."""
        n = len(self.paths)
        if self.source is None:
            return np.arange(n, dtype=np.int64) + len(self.source_names)
        src = np.asarray(self.source, np.int64)
        return np.where(src >= 0, src, np.arange(n, dtype=np.int64) + len(self.source_names))


@dataclass
class ExampleSet:
    """Top (or bottom) dataset examples of the units of one layer.

    Row i belongs to unit `units[i]`; column j is its j-th example, best first.
    Missing examples (fewer images than k) have image_index -1, score NaN and patch None.
    """

    units: np.ndarray  # int64 [U]
    score: np.ndarray  # float32 [U, K]
    image_index: np.ndarray  # int64 [U, K] into the ImageTable
    loc: np.ndarray  # int32 [U, K, 2]: (y, x) in the activation grid
    box: np.ndarray  # int32 [U, K, 4]: (x0, y0, x1, y1) the receptive field in model-input pixels, unclipped
    patches: list[list[np.ndarray | None]]  # [U][K] HxWxC uint8/uint16 (any [U][K] sequence: collect cuts rows lazily)
    shown: np.ndarray | None = None  # int32 [U, K, 4]: the window the patch shows (inside the input when it fits)
    heat: np.ndarray | None = None  # float32 [U, K, h, w]: the unit over the grid positions of the shown window
    heat_origin: np.ndarray | None = None  # int32 [U, K, 2]: grid (row, column) of heat[..., 0, 0]


@dataclass
class StatsBlock:
    """Per-unit activation statistics of one layer over all positions of all images.

    `sketch` holds the mergeable state (moments, histogram) that makes shard merging exact;
    its arrays all have the unit axis first. Reported fields are derived from it.
    """

    units: np.ndarray  # int64 [U]
    count: np.ndarray  # int64 [U] positions seen
    mean: np.ndarray  # float64 [U]
    std: np.ndarray  # float64 [U]
    min: np.ndarray  # float64 [U]
    max: np.ndarray  # float64 [U]
    frac_pos: np.ndarray  # float64 [U]
    quantiles: np.ndarray  # float64 [U, len(QUANTILES)]
    sketch: dict[str, np.ndarray] = field(default_factory=dict)
    sketch_attrs: dict[str, float | int | str] = field(default_factory=dict)


@dataclass
class ProbeBlock:
    """Spatial-mean activations of every unit of one layer on the probe images (float16)."""

    image_index: np.ndarray  # int64 [P] into the ImageTable
    acts: np.ndarray  # float16 [P, U]


@dataclass
class Strongest:
    """Each unit's strongest images by spatial maximum (the top `fraction` of the images, at least one):
    what label profiles count beside the top-k examples (NetDissect's top quantile, with image labels)."""

    units: np.ndarray  # int64 [U]
    score: np.ndarray  # float32 [U, k], best first; NaN where missing
    image_index: np.ndarray  # int64 [U, k] into the ImageTable; -1 where missing
    fraction: float = 0.01
    per_source: int = 0  # at most this many images of one source group per unit (0: no limit)


@dataclass
class ActivationSample:
    """A seeded uniform sample of one layer's position vectors (what unit spaces are fitted on).

    Row i is the activation vector (float16 [C]) at grid position `positions[i]` = (row, col) of image
    `image_index[i]`; `keys` (uint64, ascending) are the rows' sample keys: the sample is the `size`
    smallest keys among `population` positions (see `scopecli.core.sketch.position_keys`).
    """

    keys: np.ndarray  # uint64 [S], ascending
    vectors16: np.ndarray  # float16 [S, C]
    image_index: np.ndarray  # int64 [S] into the ImageTable
    positions: np.ndarray  # int32 [S, 2]: (row, col) in the position grid
    seed: int
    size: int  # the N asked for (S <= N: fewer positions existed)
    population: int = 0  # positions the sample was drawn from

    @property
    def vectors(self) -> np.ndarray:
        """float32 [S, C] (the stored float16 values, widened)."""
        return self.vectors16.astype(np.float32)

    def __len__(self) -> int:
        return len(self.keys)


NONLINEARITIES = ("none", "relu", "topk")


@dataclass
class UnitSpace:
    """A unit space on a layer: z = f(encoder @ (x - pre_bias) + bias) at every position, x the layer's
    activation vector there; reconstruction x_hat = pre_bias + z @ decoder.

    f is none, relu or topk (ReLU of the k_active largest pre-activations, the rest 0). The decoder rows
    are the space's directions (what `--objective direction` renders). `quality` holds the fit's numbers
    (explained_variance, r2, dead_fraction, fit_seconds, ...; NaN where a number does not apply) and
    `params` the settings it was fitted with.
    """

    base: str  # the layer it is fitted on
    name: str  # its own name (the part after '@')
    encoder: np.ndarray  # float32 [k, C]
    pre_bias: np.ndarray  # float32 [C]
    bias: np.ndarray  # float32 [k]
    decoder: np.ndarray  # float32 [k, C]
    nonlinearity: str = "none"
    k_active: int = 0  # topk: latents kept per position
    method: str = "pca"  # pca | nmf | sae | import
    seed: int = 0
    data_sha256: str = ""  # sha256 of the activation sample it was fitted on ('' for an import)
    quality: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    note: str = ""  # e.g. which encoder NMF stores

    @property
    def layer(self) -> str:
        return f"{self.base}@{self.name}"

    @property
    def k(self) -> int:
        return int(self.encoder.shape[0])

    @property
    def width(self) -> int:
        return int(self.encoder.shape[1])

    def pre_activations(self, x: np.ndarray) -> np.ndarray:
        """encoder @ (x - pre_bias) + bias for rows x [n, C] (float64)."""
        x = np.asarray(x, np.float64)
        return (x - self.pre_bias) @ self.encoder.T.astype(np.float64) + self.bias

    def encode(self, x: np.ndarray) -> np.ndarray:
        """z [n, k] for activation vectors x [n, C] (numpy; the model side encodes with torch)."""
        h = self.pre_activations(x)
        if self.nonlinearity == "none":
            return h
        h = np.maximum(h, 0.0)
        if self.nonlinearity == "topk" and self.k_active < h.shape[1]:
            cut = np.argpartition(-h, self.k_active - 1, axis=1)[:, self.k_active:]
            np.put_along_axis(h, cut, 0.0, axis=1)
        return h

    def decode(self, z: np.ndarray) -> np.ndarray:
        """x_hat [n, C] = pre_bias + z @ decoder."""
        return self.pre_bias + np.asarray(z, np.float64) @ self.decoder.astype(np.float64)


@dataclass
class Caricature:
    """What `scope caricature` puts for one (layer, photo): the images and the evidence."""

    source_sha256: str
    source_name: str
    image: np.ndarray  # HxWx3 uint8, the caricature
    photo: np.ndarray  # HxWx3 uint8, the photo as the model saw it
    cosine: float  # cosine(activation of the caricature, activation of the photo) at the layer
    magnitude_ratio: float  # |activation of the caricature| / |activation of the photo|
    steps: int
    size: int
    seed: int
    lr: float
    power: float  # the objective: dot(a, a_photo) * max(cos, 0.1) ** power
    param: str
    time_s: float = 0.0


@dataclass
class AtlasBlock:
    """What `scope atlas` puts for one layer (replaces any atlas the layer had)."""

    grid: int
    layout: str  # "umap" | "pca"
    layout_note: str  # why this layout (e.g. "umap-learn is not installed")
    seed: int
    vectors: int  # sample vectors laid out
    steps: int
    size: int
    power: float
    param: str
    lr: float
    cell: np.ndarray  # int32 [A, 2]: (row, col) of each non-empty cell
    count: np.ndarray  # int32 [A]: sample vectors in it
    center: np.ndarray  # float32 [A, 2]: mean layout coordinate of its vectors, in [0, 1]
    mean: np.ndarray  # float32 [A, C]: their mean activation vector (the direction rendered)
    act_start: np.ndarray  # float64 [A]: the direction's score on the initial image
    act_final: np.ndarray  # float64 [A]: and on the rendered one
    images: list[np.ndarray] = field(default_factory=list)  # HxWx3 uint8 per cell (or pngs below)
    pngs: list[bytes] | None = None
    heights: np.ndarray | None = None
    widths: np.ndarray | None = None


INPUTS_K = 16  # inputs of each sign kept per unit
NEVER_FIRES = "never fires on the collected images (no top example above 0): no attribution"


@dataclass(frozen=True)
class InputRow:
    """One strongest input of a unit: unit `unit` of layer `layer`, with its signed attribution."""

    layer: str
    unit: int
    attribution: float

    def to_json(self) -> dict:
        return {"layer": self.layer, "unit": self.unit, "attribution": self.attribution}


class UnitInputs(list):
    """A unit's strongest inputs (`InputRow`s): positive by decreasing attribution, then negative, most
    negative first. Empty when none were computed or the unit never fires (`note` says which)."""

    def __init__(self, rows=(), source_layer: str | None = None, examples: int = 0, note: str = ""):
        super().__init__(rows)
        self.source_layer = source_layer
        self.examples = examples
        self.note = note

    @property
    def positive(self) -> list[InputRow]:
        return [r for r in self if r.attribution > 0]

    @property
    def negative(self) -> list[InputRow]:
        return [r for r in self if r.attribution < 0]

    def to_json(self) -> dict:
        return {"from": self.source_layer, "examples": self.examples, "note": self.note,
                "rows": [r.to_json() for r in self]}


@dataclass
class InputsBlock:
    """What a circuits run puts for one layer: per unit row, the source layer index, the examples averaged,
    and 2k (unit, attribution) columns (see `scopecli/artifact/elements/inputs.py`)."""

    units: np.ndarray  # int64 [U]
    source_layers: list[str]
    source: np.ndarray  # int32 [U]
    examples: np.ndarray  # int32 [U]
    unit: np.ndarray  # int64 [U, 2k]
    attribution: np.ndarray  # float32 [U, 2k]
    k: int = INPUTS_K

    @classmethod
    def from_table(cls, units, source_layer: str, table: np.ndarray, examples, k: int = INPUTS_K) -> "InputsBlock":
        """Rows from a full attribution table [U, C'] (NaN rows: no attribution)."""
        table = np.asarray(table, np.float64)
        units = np.asarray(units, np.int64).reshape(-1)
        out_u = np.full((len(units), 2 * k), -1, np.int64)
        out_a = np.full((len(units), 2 * k), np.nan, np.float32)
        for i, row in enumerate(table):
            if not np.isfinite(row).any():
                continue
            row = np.where(np.isfinite(row), row, 0.0)
            pos = np.argsort(-row, kind="stable")
            pos = pos[row[pos] > 0][:k]
            neg = np.argsort(row, kind="stable")
            neg = neg[row[neg] < 0][:k]
            out_u[i, :len(pos)], out_a[i, :len(pos)] = pos, row[pos]
            out_u[i, k:k + len(neg)], out_a[i, k:k + len(neg)] = neg, row[neg]
        return cls(units, [source_layer], np.zeros(len(units), np.int32), np.asarray(examples, np.int32).reshape(-1),
                   out_u, out_a, k)

    def rows_of(self, i: int) -> UnitInputs:
        layer = self.source_layers[int(self.source[i])]
        n = int(self.examples[i])
        rows = [InputRow(layer, int(u), float(a)) for u, a in zip(self.unit[i], self.attribution[i])
                if u >= 0 and np.isfinite(a)]
        return UnitInputs(rows, layer, n, "" if n > 0 else NEVER_FIRES)


@dataclass
class LabelRow:
    """One class in a unit's profile: how many of the images were of it, that as a fraction, the class's
    share of the whole dataset (base rate), and fraction / base rate (lift; 1 = no preference)."""

    class_name: str
    count: int
    fraction: float
    base_rate: float
    lift: float

    def to_json(self) -> dict:
        return {"class": self.class_name, "count": self.count, "fraction": self.fraction, "base_rate": self.base_rate,
                "lift": self.lift}


@dataclass
class LabelProfile:
    """What a unit fires on: `rows` over its top-k examples, `strongest` over its top 1 % of images (each
    best first, at most MAX_ROWS), `images` how many labelled images each view counted, `note` a caveat
    (e.g. one class only). Iterating gives `rows`; empty without labels."""

    rows: list[LabelRow] = field(default_factory=list)
    strongest: list[LabelRow] = field(default_factory=list)
    images: tuple[int, int] = (0, 0)
    note: str = ""

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_json(self) -> dict:
        return {"top_examples": [r.to_json() for r in self.rows], "strongest_images": [r.to_json() for r in self.strongest],
                "images": list(self.images), "note": self.note}
