"""Turn blended class probabilities into labels, band by band.

Semantic models: argmax into class ids.  Instance models (nuclei) predict
background / interior / boundary; instances are the connected interiors
(seeds), optionally split at necks (:func:`split_seeds`), grown into the
boundary pixels next to them, small objects removed.

Everything here consumes the finished bands that
:func:`segloop.core.inference.tiling.predict_tiled` hands to its sink, so a 20k x 20k
image never needs an image-sized probability or int64 array: the instance
assembler writes band-local ids straight into the output label array and fixes
them up in two more band-wise passes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from segloop.errors import InvalidImageError, ModelPackageError

__all__ = [
    "InstanceParams",
    "InstanceAssembler",
    "SemanticAssembler",
    "keep_largest_components",
    "keep_largest_groups",
    "UnionFind",
    "ENTROPY_EPS",
    "EntropySink",
    "LabelAssembly",
    "entropy",
    "instances_from_probs",
    "label_dtype_for",
    "split_seeds",
]

_UNASSIGNED = np.iinfo(np.uint16).max      # band-local marker: foreground, no seed yet
_MAX_LOCAL = _UNASSIGNED - 1


@dataclass(frozen=True)
class InstanceParams:
    """Post-processing parameters of an instance model (stored in the package).

    Attributes
    ----------
    interior_class, boundary_class : int
        Channel indices of the interior and boundary probabilities.
    seed_threshold : float
        Interior probability above which a pixel seeds an instance.
    foreground_threshold : float
        ``1 - P(background)`` above which a pixel belongs to some instance.
    grow_px : int
        How far (pixels) seeds grow into the foreground around them.
    min_size : int
        Instances with fewer pixels are removed.
    split_h : float
        0 (the default): each connected seed region is one instance.  Above 0, a seed region
        with a waist is split: its distance transform (smoothed, sigma 1 px) is flooded from
        every maximum at least ``split_h`` pixels higher than the saddle to the next one
        (``skimage.morphology.h_maxima``), so two touching nuclei whose interiors merged through
        a neck become two.  Chosen on validation images like the thresholds
        (``segloop-train tune-postprocess``).  Seeds are split band by band: a region crossing
        a band edge of a large image is split only where its pieces do not touch across it.
    """

    interior_class: int = 1
    boundary_class: int = 2
    seed_threshold: float = 0.5
    foreground_threshold: float = 0.5
    grow_px: int = 4
    min_size: int = 12
    split_h: float = 0.0
    schema_version: int = 1

    def __post_init__(self) -> None:
        try:
            h = float(self.split_h)
        except (TypeError, ValueError):
            h = float("nan")
        if not (np.isfinite(h) and h >= 0):
            raise ModelPackageError(f"postprocess: split_h must be a number >= 0, got {self.split_h!r}")
        object.__setattr__(self, "split_h", h)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if not d["split_h"]:                  # packages written before split_h existed read the same
            del d["split_h"]
        return {"kind": "instance", **d}

    @classmethod
    def from_dict(cls, d: dict) -> InstanceParams:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def split_seeds(seeds: np.ndarray, h: float) -> tuple[np.ndarray, int]:
    """Label ``seeds`` (bool, 2D), splitting regions at necks (see :attr:`InstanceParams.split_h`).

    Returns ``(labels int32, n)`` like ``scipy.ndimage.label``; ``h`` 0 is exactly that.

    The smoothed distance transform of a region is flooded from its maxima (watershed) and two
    neighbouring basins merge, highest saddle first, unless the lower of their peaks stands at
    least ``h`` above the saddle between them: the markers of ``skimage.morphology.h_maxima``,
    found without its morphological reconstruction (several times slower).  Only regions much
    larger than the disc their deepest pixel spans (two lobes, or elongated) are examined: a
    round nucleus has nothing to split.
    """
    lab, n = ndi.label(seeds)
    if h <= 0 or n == 0:
        return lab, n
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(seeds).astype(np.float32)
    area = np.bincount(lab.ravel(), minlength=n + 1)
    deepest = np.zeros(n + 1, np.float64)             # (np.maximum.at and ndimage.maximum are far slower)
    for i, box in enumerate(ndi.find_objects(lab), 1):
        deepest[i] = dist[box][lab[box] == i].max()
    lobed = area > 1.25 * np.pi * deepest ** 2         # a disc whose deepest pixel is r deep has ~ pi r^2
    lobed[0] = False
    if not lobed.any():
        return lab, n
    region = lobed[lab]
    d = ndi.gaussian_filter(dist, 1.0)
    d[~region] = 0
    markers, m = ndi.label(region & (d >= ndi.maximum_filter(d, size=3)))
    basins = watershed(-d, markers, mask=region)
    top = np.zeros(m + 1, np.float64)                 # a basin's highest pixel is its marker (a plateau)
    at = np.flatnonzero(markers)
    top[markers.ravel()[at]] = d.ravel()[at]
    keys, saddles = _basin_saddles(basins, d, m)
    parent = np.arange(m + 1)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    for k in np.argsort(-saddles, kind="stable"):         # flood from the top: highest saddle first
        ra, rb = find(int(keys[k] // (m + 1))), find(int(keys[k] % (m + 1)))
        if ra != rb and min(top[ra], top[rb]) - saddles[k] < h:
            lo, hi = min(ra, rb), max(ra, rb)
            parent[hi] = lo
            top[lo] = max(top[ra], top[rb])
    roots = np.array([find(i) for i in range(m + 1)])
    out = lab.astype(np.int32)
    _, pieces = np.unique(roots[basins[region]], return_inverse=True)
    out[region] = n + 1 + pieces.astype(np.int32)
    ids = np.unique(out)[1:] if out.min() == 0 else np.unique(out)
    lut = np.zeros(int(out.max()) + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[out], int(ids.size)


def _basin_saddles(basins: np.ndarray, d: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """For each pair of 4-neighbouring basins (key ``a * (m + 1) + b``, a < b): the highest
    ``min(d)`` across their border."""
    keys, saddles = [], []
    for a, b, da, db in ((basins[:, :-1], basins[:, 1:], d[:, :-1], d[:, 1:]),
                         (basins[:-1], basins[1:], d[:-1], d[1:])):
        edge = (a != b) & (a > 0) & (b > 0)
        lo = np.minimum(a[edge], b[edge]).astype(np.int64)
        hi = np.maximum(a[edge], b[edge]).astype(np.int64)
        keys.append(lo * (m + 1) + hi)
        saddles.append(np.minimum(da[edge], db[edge]).astype(np.float64))
    keys, saddles = np.concatenate(keys), np.concatenate(saddles)
    order = np.lexsort((-saddles, keys))
    keys, saddles = keys[order], saddles[order]
    first = np.r_[True, keys[1:] != keys[:-1]] if keys.size else np.zeros(0, bool)
    return keys[first], saddles[first]


def label_dtype_for(n_objects: int) -> np.dtype:
    """uint16 up to 65,535 objects, uint32 beyond."""
    return np.dtype(np.uint16) if n_objects <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


#: Probabilities are clipped to at least this inside the log of :func:`entropy`; an exact zero
#: still adds nothing (``0 * log(eps) == 0``).  Far below float16 resolution, so float16
#: maps of certain pixels are exactly 0.
ENTROPY_EPS = 1e-12


def entropy(probs: np.ndarray, *, axis: int = 0, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Normalized Shannon entropy of class probabilities, ``H(p) / log K`` in [0, 1].

    The one entropy of segloop: the ``uncertainty`` map of :meth:`Model.predict`
    (float16) and the ``"entropy"`` method of
    :func:`segloop.core.inference.uncertainty.estimate_uncertainty` (float32) are this.

    Parameters
    ----------
    probs : (..., K, ...) float ndarray
        Probabilities summing to 1 along ``axis``.
    axis : int
        The class axis.
    dtype : numpy dtype
        Of the result, whatever the input's: float32 for uncertainty maps,
        float16 for :meth:`Model.predict`'s.  ``H = -sum_k p_k * log(max(p_k,
        ENTROPY_EPS))`` (eps ``1e-12``) is summed in float32, divided by
        ``log K`` in float64, clipped to [0, 1] and rounded once to ``dtype``.

    Returns
    -------
    (...) ndarray of ``dtype``
        ``probs``' shape without ``axis``: 0 = one class certain, 1 = uniform
        over the K classes (0 everywhere when K == 1).
    """
    p = np.asarray(probs, dtype=np.float32)
    k = p.shape[axis]
    if k < 2:
        return np.zeros(np.delete(p.shape, axis if axis >= 0 else p.ndim + axis), dtype)
    h = -(p * np.log(np.clip(p, ENTROPY_EPS, 1.0))).sum(axis=axis)
    h = h / np.float64(np.log(k))                 # float64: one rounding, to ``dtype``
    return np.clip(h, 0.0, 1.0, out=h).astype(dtype)


class SemanticAssembler:
    """Sink writing ``argmax`` class ids into ``out`` (2D or stack)."""

    def __init__(self, out: np.ndarray):
        self.out = out

    def __call__(self, z: int, y0: int, y1: int, probs: np.ndarray) -> None:
        dst = self.out[z] if self.out.ndim == 3 else self.out
        dst[y0:y1] = probs.argmax(axis=0).astype(self.out.dtype, copy=False)

    def finish(self) -> np.ndarray:
        return self.out


class EntropySink:
    """Sink writing per-pixel normalized :func:`entropy` into ``out`` (cast to its dtype, float16 in :meth:`Model.predict`)."""

    def __init__(self, out: np.ndarray):
        self.out = out

    def __call__(self, z: int, y0: int, y1: int, probs: np.ndarray) -> None:
        dst = self.out[z] if self.out.ndim == 3 else self.out
        dst[y0:y1] = entropy(probs, dtype=self.out.dtype)


@dataclass
class _Band:
    y0: int
    y1: int
    offset: int          # global provisional id of local id 1 is offset + 1
    n_local: int


@dataclass
class UnionFind:
    """Disjoint sets of ids 0..n (0 is background); the root of a set is its smallest id."""

    parent: list[int] = field(default_factory=lambda: [0])

    def grow(self, n: int) -> None:
        self.parent.extend(range(len(self.parent), len(self.parent) + n))

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        """The root of every id, ``(n + 1,)`` int64 (pointer jumping: no Python loop over ids)."""
        roots = np.asarray(self.parent, dtype=np.int64)
        while True:
            nxt = roots[roots]
            if np.array_equal(nxt, roots):
                return roots
            roots = nxt


class InstanceAssembler:
    """Streaming instance segmentation of one 2D plane.

    Feed finished bands in top-to-bottom order (it is a
    :class:`~segloop.core.inference.tiling.BandSink` for one plane), then call
    :meth:`finish`.

    Pass 1 (``__call__``): per band, connected components of seed pixels get
    band-local ids written into a uint16 work array; foreground pixels with no
    seed get a marker; components touching across the band edge are joined.
    Pass 2 (``finish``): per band, seeds grow into neighbouring foreground
    (``grow_px``), and object sizes are counted.  Pass 3: small objects go,
    ids become sequential, and the final labels are written band by band.

    Parameters
    ----------
    shape : (H, W)
    params : InstanceParams
    out : (H, W) uint16 or uint32 ndarray, optional
        Where to write the labels (a memmap for huge images).  Allocated as
        uint16 when omitted; replaced by a uint32 array if more than 65,535
        objects are found (``finish`` returns the array actually used).
    """

    def __init__(self, shape: tuple[int, int], params: InstanceParams = InstanceParams(), *,
                 out: np.ndarray | None = None):
        self.shape = tuple(shape)
        self.params = params
        self.work = out if out is not None else np.zeros(self.shape, np.uint16)
        if self.work.shape != self.shape or self.work.dtype not in (np.uint16, np.uint32):
            raise ValueError(f"out must be a {self.shape} uint16/uint32 array")
        self.bands: list[_Band] = []
        self.uf = UnionFind()
        self.n_objects = 0

    # -- pass 1 ---------------------------------------------------------
    def __call__(self, z: int, y0: int, y1: int, probs: np.ndarray) -> None:
        p = self.params
        seeds = probs[p.interior_class] > p.seed_threshold
        fg = (1.0 - probs[0]) > p.foreground_threshold
        fg |= seeds
        local, n = split_seeds(seeds, p.split_h)
        if n > _MAX_LOCAL:
            # Split pathological bands so local ids fit in uint16.
            mid = (y0 + y1) // 2
            if mid == y0:
                raise ValueError("too many objects in a single row")
            self(z, y0, mid, probs[:, : mid - y0])
            self(z, mid, y1, probs[:, mid - y0:])
            return
        local = local.astype(np.uint16)
        local[fg & (local == 0)] = _UNASSIGNED
        offset = len(self.uf.parent) - 1
        self.uf.grow(n)
        if self.bands:
            prev = self.bands[-1]
            above = self._global(np.asarray(self.work[prev.y1 - 1]), prev)
            below = local[0].astype(np.int64)
            both = (above > 0) & (below > 0) & (below != _UNASSIGNED)
            for a, b in set(zip(above[both].tolist(), (below[both] + offset).tolist())):
                self.uf.union(a, b)
        self.work[y0:y1] = local
        self.bands.append(_Band(y0, y1, offset, n))

    @staticmethod
    def _global(rows: np.ndarray, band: _Band) -> np.ndarray:
        """Band-local ids -> global provisional ids (marker -> -1, bg -> 0)."""
        g = rows.astype(np.int64)
        seed = (g > 0) & (g != _UNASSIGNED)
        g[seed] += band.offset
        g[rows == _UNASSIGNED] = -1
        return g

    def _rows_global(self, r0: int, r1: int, c0: int, c1: int, cache: dict) -> np.ndarray:
        """Global provisional ids of rows [r0, r1), columns [c0, c1), whichever bands they lie in."""
        parts = []
        for i, b in enumerate(self.bands):
            a, c = max(r0, b.y0), min(r1, b.y1)
            if a < c:
                src = cache.get(i)
                rows = src[a - b.y0:c - b.y0, c0:c1] if src is not None else np.asarray(self.work[a:c, c0:c1])
                parts.append(self._global(rows, b))
        return np.concatenate(parts, axis=0)

    #: Seeds grow at most ``grow_px``, so growth runs on column chunks of this
    #: width (plus margins) and its scratch memory does not scale with width.
    GROW_CHUNK = 2048

    def _grown_band(self, i: int, roots: np.ndarray, cache: dict) -> np.ndarray:
        """Root ids of band i after growing seeds into foreground: (rows, W) int64."""
        from skimage.segmentation import expand_labels

        b = self.bands[i]
        m = self.params.grow_px
        height, width = self.shape
        r0, r1 = max(0, b.y0 - m), min(height, b.y1 + m)
        out = np.empty((b.y1 - b.y0, width), np.int64)
        for x0 in range(0, width, self.GROW_CHUNK):
            x1 = min(x0 + self.GROW_CHUNK, width)
            c0, c1 = max(0, x0 - m), min(width, x1 + m)
            g = self._rows_global(r0, r1, c0, c1, cache)
            marker = g < 0
            lab = np.where(g > 0, roots[np.maximum(g, 0)], 0)
            if m > 0 and marker.any():
                lab = np.where(marker, expand_labels(lab, distance=m), lab)
            out[:, x0:x1] = lab[b.y0 - r0: b.y1 - r0, x0 - c0: x1 - c0]
        return out

    # -- passes 2 and 3 ------------------------------------------------
    def finish(self) -> np.ndarray:
        """Grow, filter by size, relabel sequentially; return the label array."""
        roots = self.uf.roots()
        sizes = np.zeros(len(roots), np.int64)
        for i in range(len(self.bands)):
            lab = self._grown_band(i, roots, {})
            sizes += np.bincount(lab.ravel(), minlength=len(roots))[: len(roots)]
        sizes[0] = 0
        keep = sizes >= max(self.params.min_size, 1)
        final = np.zeros(len(roots), np.int64)
        final[keep] = np.arange(1, int(keep.sum()) + 1)
        self.n_objects = int(keep.sum())
        dtype = label_dtype_for(self.n_objects)
        out = self.work
        if np.dtype(out.dtype).itemsize < dtype.itemsize:
            out = np.zeros(self.shape, dtype)      # > 65,535 objects: widen once
        # Pass 3 overwrites band i, whose provisional rows later bands still
        # read as context (grow_px rows): keep copies of just those rows.
        m = self.params.grow_px
        originals: dict[int, np.ndarray] = {}
        for i, b in enumerate(self.bands):
            lab = self._grown_band(i, roots, originals)
            for j in [j for j in originals if self.bands[j].y1 <= b.y0 - m]:
                del originals[j]
            if m > 0:
                originals[i] = np.asarray(self.work[b.y0:b.y1]).copy()
            out[b.y0:b.y1] = final[lab].astype(out.dtype, copy=False)
        if not self.bands:
            out[...] = 0
        return out


def instances_from_probs(probs: np.ndarray, params: InstanceParams = InstanceParams(),
                         *, band_rows: int = 256) -> np.ndarray:
    """Instance labels from a whole ``(K, H, W)`` probability array.

    Convenience for small images and tests; runs the same streaming
    assembler as tiled inference.
    """
    asm = InstanceAssembler(probs.shape[1:], params)
    for y0 in range(0, probs.shape[1], band_rows):
        y1 = min(y0 + band_rows, probs.shape[1])
        asm(0, y0, y1, probs[:, y0:y1])
    return asm.finish()


class LabelAssembly:
    """The sink of one :meth:`Model.predict` run: labels, uncertainty and probabilities, band by band.

    Call it as a :class:`~segloop.core.inference.tiling.BandSink`,
    ``assembly(z, y0, y1, probs)`` with ``z`` the plane's index in the image
    (0 for a 2D image) and ``probs (K, y1 - y0, W)`` float32, planes in order;
    then :meth:`finish`.  Every band goes, in this order, to
    ``probability_sink`` (with ``z - z0``), to the kept probabilities, to the
    labels (argmax, or the streaming :class:`InstanceAssembler` of the plane)
    and to the entropy map.

    Parameters
    ----------
    shape : (H, W) or (Z, H, W)
        Spatial shape of the whole image.
    z_range : (z0, z1)
        Planes predicted (``(0, 1)`` for a 2D image).
    task : {"semantic", "instance"}
    n_classes : int
        ``K``; semantic labels are uint8 below 256 classes, uint16 from 256.
    params : InstanceParams, optional
        Instance post-processing (instance task).
    out : uint16/uint32 (instance) or uint8/uint16/uint32 (semantic) ndarray of ``shape``, optional
        Preallocated labels of the full image; only the planes ``z0 .. z1 - 1`` are written.
    uncertainty : bool
        Keep a float16 :func:`entropy` map of the predicted planes.
    probabilities : bool
        Keep the float16 probabilities ``(K, *planes)`` of the predicted planes.
    probability_sink : callable, optional
        ``probability_sink(z - z0, y0, y1, probs)`` for every band.
    labels : bool
        Assemble labels (default).  False: only the uncertainty, probabilities and
        ``probability_sink`` (a resampled run assembles its labels on the model's grid, see
        :mod:`segloop.core.inference.resolution`); ``labels`` is then None.

    Attributes
    ----------
    labels : (H, W) or (z1 - z0, H, W) ndarray, or ``out``
        Replaced by a uint32 copy if a plane of a uint16 array gets more than
        65,535 objects (with a warning).
    uncertainty : float16 ndarray or None
    probabilities : float16 ndarray or None

    Raises
    ------
    InvalidImageError
        ``out`` has the wrong shape or dtype.
    """

    def __init__(self, shape: tuple[int, ...], *, z_range: tuple[int, int], task: str, n_classes: int,
                 params: InstanceParams | None = None, out: np.ndarray | None = None, uncertainty: bool = False,
                 probabilities: bool = False, probability_sink=None, labels: bool = True,
                 keep_largest: Sequence[Sequence[int]] = ()):
        self.shape = tuple(int(n) for n in shape)
        self.keep_largest = tuple(tuple(int(c) for c in g) for g in keep_largest)
        self.stack = len(self.shape) == 3
        self.z0, z1 = z_range
        self.instance = task == "instance"
        self.n_classes = int(n_classes)
        self.params = params if params is not None else InstanceParams()
        ok = (np.uint16, np.uint32) if self.instance else (np.uint8, np.uint16, np.uint32)
        if out is not None and (tuple(out.shape) != self.shape or np.dtype(out.dtype) not in ok):
            raise InvalidImageError(f"out must be a uint16/uint32 array of the full shape {self.shape}, got "
                                    f"{np.dtype(out.dtype)} {tuple(out.shape)}")
        self.out_given = out is not None
        self.part_shape = ((z1 - self.z0,) + self.shape[-2:]) if self.stack else self.shape
        self.assemble_labels = bool(labels)
        if out is None and self.assemble_labels:
            out = np.zeros(self.part_shape, np.uint16 if self.instance or self.n_classes >= 256 else np.uint8)
        self.labels = out
        self.target = self._target_of(out) if out is not None else None     # the planes written: z0 .. z1 - 1
        self.uncertainty = np.zeros(self.part_shape, np.float16) if uncertainty else None
        self._entropy = EntropySink(self.uncertainty) if uncertainty else None
        self.keep_probabilities = bool(probabilities)
        self.probabilities: np.ndarray | None = None
        self.probability_sink = probability_sink
        self._semantic = None if self.instance or not self.assemble_labels else SemanticAssembler(self.target)
        self._plane: int | None = None               # the plane the instance assembler works on
        self._asm: InstanceAssembler | None = None
        self.n_objects = 0

    def _target_of(self, arr: np.ndarray) -> np.ndarray:
        return arr[self.z0:self.z0 + self.part_shape[0]] if (self.stack and arr.shape == self.shape) else arr

    def __call__(self, z: int, y0: int, y1: int, probs: np.ndarray) -> None:
        local = z - self.z0                          # sinks see planes of the predicted range
        if self.probability_sink is not None:
            self.probability_sink(local, y0, y1, probs)
        if self.keep_probabilities:
            if self.probabilities is None:
                self.probabilities = np.zeros((probs.shape[0],) + self.part_shape, np.float16)
            (self.probabilities[:, local] if self.stack else self.probabilities)[:, y0:y1] = probs
        if not self.assemble_labels:
            pass
        elif self.instance:
            if self._plane != local:
                self._finish_plane()
                self._plane = local
                self._asm = InstanceAssembler(self.shape[-2:], self.params,
                                              out=self.target[local] if self.stack else self.target)
            self._asm(local, y0, y1, probs)
        else:
            self._semantic(local, y0, y1, probs)
        if self._entropy is not None:
            self._entropy(local, y0, y1, probs)

    def _finish_plane(self) -> None:
        asm = self._asm
        if asm is None:
            return
        res = asm.finish()
        if res.dtype != self.labels.dtype:           # > 65,535 objects in this plane: widen once
            warnings.warn(f"{asm.n_objects} objects: labels widened to uint32"
                          + (" (a new array, not `out`)" if self.out_given else ""), stacklevel=4)
            if self.stack:
                self.labels = self.labels.astype(np.uint32)
                self.target = self._target_of(self.labels)
                self.target[self._plane] = res
            else:
                self.labels = self.target = res
        self.n_objects += asm.n_objects
        self._asm = None

    def finish(self) -> tuple[np.ndarray, int]:
        """Finish the last plane; return ``(labels, n_objects)``.

        ``n_objects`` counts instances (instance task) or the distinct
        non-background classes present (semantic); ``(None, 0)`` without ``labels``.
        """
        if not self.assemble_labels:
            return None, 0
        if self.instance:
            self._finish_plane()
            return self.labels, self.n_objects
        if self.keep_largest and self.part_shape == self.shape:      # the whole image: its components are whole
            keep_largest_components(self.target, self.keep_largest)
        n = int(sum(1 for c in range(1, self.n_classes) if (self.target == c).any()))
        return self.labels, n


def keep_largest_groups(spec) -> tuple[tuple[int, ...], ...]:
    """A semantic package's ``postprocess["keep_largest"]``: groups of class ids whose union keeps only its
    largest connected component (e.g. ``[[1, 2, 3, 4]]``: one brain tumour); ``()`` otherwise."""
    if spec.task != "semantic":
        return ()
    groups = (spec.postprocess or {}).get("keep_largest") or ()
    return tuple(tuple(int(c) for c in g) for g in groups)


def keep_largest_components(labels: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """In place: for each group of class ids, voxels of those classes outside the largest connected
    component of their union (face-connected, 2D or 3D as ``labels``) become background.

    The post-processing nnU-Net chooses on validation when a structure is known to be one object
    (a brain tumour with its edema, necrosis and enhancing rim): it removes the scattered false
    positives far from it.  Returns ``labels``.
    """
    from scipy import ndimage as ndi

    for group in groups:
        member = np.isin(labels, list(group))
        comp, n = ndi.label(member)
        if n <= 1:
            continue
        largest = int(np.argmax(np.bincount(comp.ravel())[1:])) + 1
        labels[member & (comp != largest)] = 0
    return labels
