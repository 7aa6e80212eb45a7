"""Serialization strategies for RandSAC (Hua et al., "Self-supervision through Random Segments with
Autoregressive Coding", arXiv:2203.12054).

Tokens stay in raster order. A serialization is a per-token integer ``rank: (B, N) int64``: the position, in the
sampled prediction order, of the finest segment that owns the token. Tokens with equal rank form one segment and the
ranks of one sample are exactly ``0 .. S_b-1`` (``S_b`` may differ per sample: blobs that got no token vanish).

Spec strings use the paper's notation and select a strategy everywhere:

- ``raster`` (alias ``patch-raster``): each token its own segment, raster order.
- ``random`` (alias ``patch-random``): each token its own segment, random order per sample.
- ``square:K``: K squares of ``M x M`` tokens, random order; ``square:16-4`` groups them hierarchically. The
  squares are laid from the top-left token and clipped at the bottom and right border, with the smallest side M
  that gives ``ceil(h/M) * ceil(w/M) == K`` (8x8: K in 64, 16, 9, 4, 1; 7x7: K in 49, 16, 9, 4, 1). Deviation: the
  paper only uses grids that M divides ("a grid of 13x13 can not be divided into any kind of squares"); on such
  grids the result is the paper's, on others the last row and column of squares are narrower strips.
- ``blob:K``: K random Gaussians, each token goes to the most likely one; ``blob:11-5``, ``blob:11-7-3`` hierarchical.
- ``shuffle:K``: blob(K) segment sizes, tokens randomly reassigned (spatial coherence destroyed).

Hierarchy levels are separated by ``-`` or ``->`` (``blob:11->5``); whitespace is ignored. All sampling is vectorized
over the batch and draws every random number from an explicit ``torch.Generator``.
"""
import math
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    'SegmentSpec',
    'Segments',
    'parse_segments',
    'sample_segments',
    'sample_rank',
    'sample_blob_gaussians',
    'assign_to_blobs',
    'token_positions',
]

DeviceLike = Union[str, torch.device, None]

_KINDS = ('raster', 'random', 'square', 'blob', 'shuffle')
_ALIASES = {'patch-raster': 'raster', 'patch-random': 'random'}
_ACCEPTED = (
    'accepted forms: raster, random, square:K[-K2...], blob:K[-K2...], shuffle:K '
    "(e.g. 'raster', 'patch-random', 'square:16', 'square:16-4', 'blob:7', 'blob:11-5', 'blob:11->7->3', 'shuffle:7')"
)
_SPEC_RE = re.compile(r'^(square|blob|shuffle):(\d+(?:-\d+)*)$')

# the sort key packs one priority per level into an int64; keep clear of overflow
_MAX_KEY = 2**62

# sampling range of the blob Gaussians, per axis (paper, eq. 1)
_MEAN_RANGE = (-1.75, 1.75)
_STD_RANGE = (0.5, 1.0)


def _spec_error(spec: object, reason: str) -> ValueError:
    return ValueError(f'invalid segment spec {spec!r}: {reason}; {_ACCEPTED}')


def _spec_problem(kind: str, counts: Tuple[int, ...]) -> Optional[str]:
    """Why (kind, counts) is not a valid strategy, or None."""
    if kind not in _KINDS:
        return f'unknown kind {kind!r}'
    if any(not isinstance(k, int) or isinstance(k, bool) for k in counts):
        return 'segment counts must be integers'
    if kind in ('raster', 'random'):
        return f'{kind} takes no segment count' if counts else None
    if not counts:
        return f'{kind} needs a segment count, e.g. {kind}:7'
    if any(k < 1 for k in counts):
        return 'segment counts must be >= 1'
    if any(fine <= coarse for fine, coarse in zip(counts, counts[1:])):
        return 'a hierarchy must get coarser: counts must strictly decrease, e.g. 11-5'
    if kind == 'shuffle' and len(counts) > 1:
        return 'shuffle has no hierarchy, use shuffle:K'
    if math.prod(counts) >= _MAX_KEY:
        return 'hierarchy too deep: the product of the counts must stay below 2**62'
    return None


@dataclass(frozen=True)
class SegmentSpec:
    """A parsed serialization strategy.

    Attributes:
        kind: 'raster' | 'random' | 'square' | 'blob' | 'shuffle'.
        counts: segment count per hierarchy level, finest level first, e.g. (11, 5); () for raster/random.
    """

    kind: str
    counts: Tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, 'counts', tuple(self.counts))  # accept lists, keep the dataclass hashable
        problem = _spec_problem(self.kind, self.counts)
        if problem:
            raise _spec_error(str(self), problem)

    def __str__(self) -> str:
        return f'{self.kind}:{"-".join(map(str, self.counts))}' if self.counts else self.kind

    @property
    def num_levels(self) -> int:
        """Number of hierarchy levels: 0 for raster/random, else len(counts)."""
        return len(self.counts)

    def validate(self, grid_size: Tuple[int, int]) -> None:
        """Check that this strategy fits a token grid.

        Args:
            grid_size: (h, w) token grid.

        Raises:
            ValueError: naming the spec, the grid and the fix, if the strategy cannot serialize that grid.
        """
        h, w = _check_grid(grid_size)
        n = h * w
        if self.kind in ('raster', 'random'):
            return
        if self.counts[0] > n:
            raise ValueError(
                f'segment spec {str(self)!r} asks for {self.counts[0]} segments but grid {h}x{w} has only {n} tokens; '
                f'use at most {n} segments'
            )
        if self.kind == 'square':
            _square_sides(self, (h, w))


def parse_segments(spec: Union[str, SegmentSpec]) -> SegmentSpec:
    """Parse a spec string such as 'blob:11-5' (a SegmentSpec is returned unchanged).

    Args:
        spec: strategy string (whitespace-insensitive, case-insensitive, '-' or '->' between levels) or SegmentSpec.

    Returns:
        The parsed SegmentSpec; ``str()`` of it gives the canonical string, which parses back to an equal spec.

    Raises:
        ValueError: quoting the bad input and listing the accepted forms.
    """
    if isinstance(spec, SegmentSpec):
        return spec
    if not isinstance(spec, str):
        raise _spec_error(spec, 'expected a string')
    s = re.sub(r'\s+', '', spec).lower().replace('->', '-').replace('\u2192', '-')
    s = _ALIASES.get(s, s)
    if s in ('raster', 'random'):
        return SegmentSpec(s)
    m = _SPEC_RE.match(s)
    if m is None:
        raise _spec_error(spec, 'not a known strategy')
    kind, counts = m.group(1), tuple(int(k) for k in m.group(2).split('-'))
    problem = _spec_problem(kind, counts)
    if problem:
        raise _spec_error(spec, problem)  # quote what the user wrote, not the canonical form
    return SegmentSpec(kind, counts)


@dataclass
class Segments:
    """A sampled serialization for a batch.

    Attributes:
        rank: (B, N) int64, order index of the finest segment owning each token; dense ``0 .. S_b-1`` per sample.
        levels: ``levels[0] is rank``; ``levels[l]`` (B, N) int64 is the dense order index of the level-l partition
            owning each token. Partitions are contiguous in the order. ``len(levels) == max(1, spec.num_levels)``.
        num_segments: (B,) int64, number of finest segments per sample (``S_b``).
    """

    rank: torch.Tensor
    levels: List[torch.Tensor]
    num_segments: torch.Tensor


def token_positions(grid_size: Tuple[int, int], device: DeviceLike = None) -> torch.Tensor:
    """Token centre positions normalised to [-2, 2] on each axis.

    Args:
        grid_size: (h, w) token grid.
        device: output device.

    Returns:
        (N, 2) float32 in raster order, (x, y) with x the column axis: token 0 is (-2, -2), token N-1 is (2, 2).
    """
    h, w = _check_grid(grid_size)
    ys = torch.linspace(-2.0, 2.0, h, device=device)
    xs = torch.linspace(-2.0, 2.0, w, device=device)
    y, x = torch.meshgrid(ys, xs, indexing='ij')
    return torch.stack([x, y], dim=-1).reshape(h * w, 2)


def sample_blob_gaussians(
        batch_size: int,
        num_blobs: int,
        generator: Optional[torch.Generator] = None,
        device: DeviceLike = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample K axis-aligned Gaussians per sample: means ~ U(-1.75, 1.75), std devs ~ U(0.5, 1), per axis.

    Args:
        batch_size: B.
        num_blobs: K.
        generator: source of randomness; numbers are drawn on ``generator.device`` and moved to ``device``.
        device: output device (default: the generator's device, else CPU).

    Returns:
        means (B, K, 2) and stds (B, K, 2), float32, (x, y) order.
    """
    u = _rand((2, batch_size, num_blobs, 2), generator, _out_device(generator, device))
    lo, hi = _MEAN_RANGE
    means = lo + (hi - lo) * u[0]
    lo, hi = _STD_RANGE
    stds = lo + (hi - lo) * u[1]
    return means, stds


def assign_to_blobs(positions: torch.Tensor, means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """Assign each position to its most likely Gaussian, ``argmax_k N(p | mu_k, diag(sigma_k)^2)``.

    Args:
        positions: (B, M, 2) or (M, 2) shared by the batch, (x, y).
        means: (B, K, 2).
        stds: (B, K, 2).

    Returns:
        (B, M) int64 blob index in ``0 .. K-1`` (ties go to the lowest index).
    """
    if positions.dim() == 2:
        positions = positions.unsqueeze(0)
    # one (B, M, K) tensor per axis, updated in place: a fused (B, M, K, 2) version with sum(-1) is ~3x slower on CPU
    (px, py), (mx, my), (sx, sy) = positions.unbind(-1), means.unbind(-1), stds.unbind(-1)
    dx = (px.unsqueeze(2) - mx.unsqueeze(1)).div_(sx.unsqueeze(1)).square_()
    dy = (py.unsqueeze(2) - my.unsqueeze(1)).div_(sy.unsqueeze(1)).square_()
    # log-density up to a constant; the log-sigma term matters because the blobs have different widths
    log_density = dx.add_(dy).mul_(-0.5).sub_((sx * sy).log().unsqueeze(1))  # (B, M, K)
    return log_density.argmax(-1)


def _assign_grid_to_blobs(grid_size: Tuple[int, int], means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """``assign_to_blobs(token_positions(grid_size), means, stds)`` (equal up to float rounding), but faster.

    The diagonal Gaussian's log-density is a sum of an x term and a y term, so it is computed on the w columns and
    h rows and broadcast once: two (B, N, K) ops instead of ten, which also keeps CPU threads out of the way.
    """
    h, w = grid_size
    xs = torch.linspace(-2.0, 2.0, w, device=means.device)
    ys = torch.linspace(-2.0, 2.0, h, device=means.device)
    (mx, my), (sx, sy) = means.unbind(-1), stds.unbind(-1)
    # fx: (B, w, K), fy: (B, h, K)
    fx = ((xs[:, None] - mx.unsqueeze(1)) / sx.unsqueeze(1)).square_().mul_(-0.5).sub_(sx.log().unsqueeze(1))
    fy = ((ys[:, None] - my.unsqueeze(1)) / sy.unsqueeze(1)).square_().mul_(-0.5).sub_(sy.log().unsqueeze(1))
    return (fy.unsqueeze(2) + fx.unsqueeze(1)).argmax(-1).flatten(1)  # (B, h, w, K) -> (B, N)


def sample_segments(
        spec: Union[str, SegmentSpec],
        batch_size: int,
        grid_size: Tuple[int, int],
        generator: Optional[torch.Generator] = None,
        device: DeviceLike = None,
) -> Segments:
    """Sample one serialization per sample of a batch.

    Args:
        spec: strategy, a spec string (see module docstring) or a SegmentSpec.
        batch_size: B.
        grid_size: (h, w) token grid, N = h * w.
        generator: source of all randomness; the same seed gives the same output. Random numbers are drawn on
            ``generator.device`` and then moved to ``device``, so a CPU generator can drive a CUDA run.
        device: output device (default: the generator's device, else CPU).

    Returns:
        Segments with ``rank`` (B, N), ``levels`` and ``num_segments`` (B,).

    Raises:
        ValueError: for a bad spec, or one that does not fit the grid.
    """
    spec = parse_segments(spec)
    spec.validate(grid_size)
    h, w = _check_grid(grid_size)
    n = h * w
    device = _out_device(generator, device)

    if spec.kind in ('raster', 'random'):
        labels = [torch.arange(n, device=device).expand(batch_size, n)]
        counts = [n]
    elif spec.kind == 'square':
        labels = [_square_labels((h, w), side, device).expand(batch_size, n) for side in _square_sides(spec, (h, w))]
        counts = list(spec.counts)
    else:
        labels = _blob_labels(spec, batch_size, (h, w), generator, device)
        counts = list(spec.counts)

    if spec.kind == 'raster':
        priorities = [torch.arange(n, device=device).expand(batch_size, n)]
    else:
        # an independent random priority for every segment at every level (empty blobs get one too; harmless)
        priorities = [_rand((batch_size, k), generator, device).argsort(dim=1) for k in counts]
    return _order(labels, priorities, counts)


def sample_rank(
        spec: Union[str, SegmentSpec],
        batch_size: int,
        grid_size: Tuple[int, int],
        generator: Optional[torch.Generator] = None,
        device: DeviceLike = None,
) -> torch.Tensor:
    """``sample_segments(...).rank``: (B, N) int64, dense ``0 .. S_b-1`` per sample."""
    return sample_segments(spec, batch_size, grid_size, generator=generator, device=device).rank


def _check_grid(grid_size: Sequence[int]) -> Tuple[int, int]:
    h, w = (int(s) for s in grid_size)
    if h < 1 or w < 1:
        raise ValueError(f'grid size must be positive, got {tuple(grid_size)}')
    return h, w


def _out_device(generator: Optional[torch.Generator], device: DeviceLike) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device('cpu')


def _rand(shape: Tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    # draw on the generator's device (torch requires it), then move: results depend only on the generator
    src = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=src).to(device)


def _square_count(grid_size: Tuple[int, int], side: int) -> int:
    h, w = grid_size
    return -(-h // side) * -(-w // side)  # ceil(h / side) * ceil(w / side): border squares are clipped, not dropped


def _valid_square_counts(grid_size: Tuple[int, int]) -> List[int]:
    return sorted({_square_count(grid_size, m) for m in range(1, max(grid_size) + 1)}, reverse=True)


def _square_side(grid_size: Tuple[int, int], count: int) -> Optional[int]:
    """Smallest side M whose clipped tiling has ``count`` squares, or None.

    Several sides can give the same count (7x7: sides 4, 5 and 6 all give 2x2 squares); the smallest one clips the
    least, so the border squares are the least thin (7 -> 4 + 3 rather than 6 + 1). A balanced split (10 -> 3, 3, 2, 2
    instead of 3, 3, 3, 1) would make squares of mixed sizes inside the grid and break the nesting of hierarchy
    levels (3, 3, 2, 2 is not inside 5, 5), so the clipping is kept at the border.
    """
    for m in range(1, max(grid_size) + 1):
        if _square_count(grid_size, m) == count:
            return m
    return None


def _square_sides(spec: SegmentSpec, grid_size: Tuple[int, int]) -> List[int]:
    """Square side M per level (finest first); raises ValueError if a count does not tile the grid."""
    h, w = grid_size
    sides = []
    for k in spec.counts:
        m = _square_side(grid_size, k)
        if m is None:
            raise ValueError(
                f'segment spec {str(spec)!r}: {k} squares do not tile grid {h}x{w} (squares of side M, clipped at the '
                f'border, give ceil(h/M) * ceil(w/M) squares); valid square counts for {h}x{w}: '
                f'{_valid_square_counts((h, w))}'
            )
        # both tilings start at the top-left token and are clipped by the same border, so a coarse square holds
        # whole fine squares iff every coarse boundary inside the grid is a fine one (always true when the side is a
        # multiple; also true for one coarse square spanning an axis)
        if sides and any(edge % sides[-1] for size in (h, w) for edge in range(m, size, m)):
            raise ValueError(
                f'segment spec {str(spec)!r} on grid {h}x{w}: coarse squares of side {m} do not contain whole squares '
                f'of side {sides[-1]}; pick counts whose square sides are multiples, e.g. square:16-4 on 8x8'
            )
        sides.append(m)
    return sides


def _square_labels(grid_size: Tuple[int, int], side: int, device: torch.device) -> torch.Tensor:
    """(N,) int64 raster index of the side x side square (clipped at the border) owning each token."""
    h, w = grid_size
    row = torch.arange(h, device=device) // side
    col = torch.arange(w, device=device) // side
    return (row[:, None] * -(-w // side) + col[None, :]).reshape(-1)


def _centroids(labels: torch.Tensor, positions: torch.Tensor, num: int) -> torch.Tensor:
    """(B, num, 2) mean position of the tokens with each label; (0, 0) for labels that own no token."""
    b, n = labels.shape
    sums = positions.new_zeros(b, num, 2).scatter_add_(1, labels[..., None].expand(b, n, 2), positions.expand(b, n, 2))
    sizes = positions.new_zeros(b, num).scatter_add_(1, labels, positions.new_ones(b, n))
    return sums / sizes.clamp(min=1).unsqueeze(-1)


def _blob_labels(
        spec: SegmentSpec,
        batch_size: int,
        grid_size: Tuple[int, int],
        generator: Optional[torch.Generator],
        device: torch.device,
) -> List[torch.Tensor]:
    """Raw (not dense) per-level labels (B, N) for blob and shuffle; level l labels lie in ``0 .. counts[l]-1``."""
    # draw order (level-0 Gaussians first) is kept identical for blob and shuffle, so the same seed gives shuffle
    # exactly the segment sizes of blob
    means, stds = sample_blob_gaussians(batch_size, spec.counts[0], generator, device)
    labels = [_assign_grid_to_blobs(grid_size, means, stds)]
    if spec.kind == 'shuffle':
        n = grid_size[0] * grid_size[1]
        perm = _rand((batch_size, n), generator, device).argsort(dim=1)
        return [labels[0].gather(1, perm)]
    positions = token_positions(grid_size, device)
    for fine, coarse in zip(spec.counts, spec.counts[1:]):
        # each level-l partition goes to a level-(l+1) blob by its centroid, so levels nest exactly
        means, stds = sample_blob_gaussians(batch_size, coarse, generator, device)
        parent = assign_to_blobs(_centroids(labels[-1], positions, fine), means, stds)  # (B, fine)
        labels.append(parent.gather(1, labels[-1]))
    return labels


def _order(labels: List[torch.Tensor], priorities: List[torch.Tensor], counts: List[int]) -> Segments:
    """Depth-first order: sort tokens by (coarsest priority, ..., finest priority), then dense-rank each level.

    Args:
        labels: per level (B, N) int64 label of the partition owning each token, nested, finest first.
        priorities: per level (B, counts[l]) int64, a permutation of ``0 .. counts[l]-1`` per sample.
        counts: number of labels per level.
    """
    key = torch.zeros_like(labels[0])
    strides = []
    stride = 1
    for lab, prio, k in zip(labels, priorities, counts):
        # mixed-radix key, coarsest level most significant: coarse partitions end up contiguous in the order
        key = key + prio.gather(1, lab) * stride
        strides.append(stride)
        stride *= k
    sorted_key, idx = key.sort(dim=1)
    levels = []
    for stride in strides:
        prefix = sorted_key // stride  # key of the level-l partition; monotone in sorted_key
        new = (prefix[:, 1:] != prefix[:, :-1]).long()
        dense = torch.cat([torch.zeros_like(new[:, :1]), new.cumsum(dim=1)], dim=1)
        levels.append(torch.empty_like(dense).scatter_(1, idx, dense))
    rank = levels[0]
    return Segments(rank=rank, levels=levels, num_segments=rank.max(dim=1).values + 1)
