import math

import pytest
import torch
from test_randsac_pretrain import _check_segment_causality, _wrapper

from randsac_timm.models.masks import build_masks
from randsac_timm.models.segments import (
    SegmentSpec,
    assign_to_blobs,
    parse_segments,
    sample_blob_gaussians,
    sample_rank,
    sample_segments,
    token_positions,
)

GRIDS = [(8, 8), (7, 7), (14, 14), (6, 10)]
ANY_GRID_SPECS = ['raster', 'random', 'blob:7', 'blob:11-5', 'blob:11-7-3', 'shuffle:7']
SQUARE_CASES = [
    ('square:16', (8, 8)),
    ('square:4', (8, 8)),
    ('square:4', (14, 14)),
    ('square:49', (14, 14)),
    ('square:15', (6, 10)),
    ('square:6', (4, 6)),
    ('square:16-4', (8, 8)),
    ('square:64-16-4', (8, 8)),
    ('square:49-1', (14, 14)),
    ('square:24-6', (4, 6)),
    # grids the squares do not divide: the last row and column of squares are clipped by the border
    ('square:16', (7, 7)),
    ('square:4', (7, 7)),
    ('square:9', (7, 7)),
    ('square:16', (7, 8)),
    ('square:2', (7, 8)),
    ('square:9', (8, 8)),
    ('square:16-4', (7, 7)),
    ('square:49-16-4', (7, 7)),
    ('square:49-9-1', (7, 7)),
    ('square:16-4', (7, 8)),
]
SHAPE_CASES = [(s, g) for s in ANY_GRID_SPECS for g in GRIDS] + SQUARE_CASES
HIER_CASES = [
    ('square:16-4', (8, 8)),
    ('square:64-16-4', (8, 8)),
    ('square:24-6', (4, 6)),
    ('square:16-4', (7, 7)),
    ('square:49-16-4', (7, 7)),
    ('square:16-4', (7, 8)),
    ('blob:11-5', (8, 8)),
    ('blob:11-5', (7, 7)),
    ('blob:11-5', (6, 10)),
    ('blob:11-7-3', (8, 8)),
    ('blob:11-7-3', (14, 14)),
]
BAD_SPECS = ['', 'blob', 'blob:0', 'blob:5-7', 'blob:5-5', 'square:x', 'spiral:3', 'shuffle:7-3', 'raster:3', 'blob:7-']


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _segment_sizes(rank: torch.Tensor) -> list:
    """Sorted segment sizes of one sample."""
    return sorted(torch.bincount(rank).tolist())


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True if two (N,) labelings group the tokens identically (up to renaming the labels)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _log_density(x, y, mu, sigma):
    """Brute-force Gaussian log-density with diagonal covariance, in float64 Python math."""
    out = 0.0
    for p, m, s in zip((x, y), mu, sigma):
        out += math.log(math.exp(-0.5 * ((p - m) / s) ** 2) / (s * math.sqrt(2 * math.pi)))
    return out


def _reference_assign(points, means, stds):
    """Python-loop argmax over Gaussians for one sample; returns labels and the best-vs-second margins."""
    labels, margins = [], []
    for x, y in points:
        dens = sorted(
            ((_log_density(x, y, mu, sd), k) for k, (mu, sd) in enumerate(zip(means.tolist(), stds.tolist()))),
            reverse=True,
        )
        labels.append(dens[0][1])
        margins.append(dens[0][0] - dens[1][0] if len(dens) > 1 else math.inf)
    return labels, margins


def _reference_grid_points(h, w):
    xs = [-2 + 4 * i / (w - 1) for i in range(w)] if w > 1 else [-2.0]
    ys = [-2 + 4 * i / (h - 1) for i in range(h)] if h > 1 else [-2.0]
    return [(x, y) for y in ys for x in xs]


# ---------------------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize('text', ['raster', 'random', 'square:16', 'square:16-4', 'blob:7', 'blob:11-5',
                                  'blob:11-7-3', 'shuffle:7'])
def test_canonical_spec_round_trips_through_str(text):
    spec = parse_segments(text)
    assert str(spec) == text
    assert parse_segments(str(spec)) == spec


@pytest.mark.parametrize('alias, canonical', [
    ('patch-raster', 'raster'),
    ('patch-random', 'random'),
    (' blob : 11 -> 5 ', 'blob:11-5'),
    ('blob:11->7->3', 'blob:11-7-3'),
    ('BLOB:7', 'blob:7'),
    ('square:16 - 4', 'square:16-4'),
])
def test_aliases_and_separators_parse_to_canonical_spec(alias, canonical):
    assert str(parse_segments(alias)) == canonical


def test_parsed_spec_fields_and_num_levels():
    assert parse_segments('blob:11-7-3') == SegmentSpec('blob', (11, 7, 3))
    assert parse_segments('blob:11-7-3').num_levels == 3
    assert parse_segments('random').num_levels == 0
    assert parse_segments('square:16-4').counts == (16, 4)
    spec = SegmentSpec('blob', (11, 5))
    assert parse_segments(spec) is spec


@pytest.mark.parametrize('bad', BAD_SPECS)
def test_bad_spec_raises_with_input_and_accepted_forms(bad):
    with pytest.raises(ValueError) as info:
        parse_segments(bad)
    msg = str(info.value)
    assert repr(bad) in msg
    assert 'raster' in msg and 'blob:' in msg


def test_segment_spec_constructor_rejects_invalid_fields():
    with pytest.raises(ValueError, match='coarser'):
        SegmentSpec('blob', (5, 7))
    with pytest.raises(ValueError, match='raster'):
        SegmentSpec('spiral', (3,))
    with pytest.raises(ValueError):
        SegmentSpec('random', (3,))


@pytest.mark.parametrize('text, grid, fragment', [
    ('square:25', (7, 7), '7x7'),
    ('square:12', (7, 8), '7x8'),
    ('square:16', (6, 10), '6x10'),
    ('blob:100', (8, 8), '8x8'),
    ('shuffle:65', (8, 8), '64 tokens'),
    ('square:16-9', (12, 12), 'multiple'),
    ('square:9-4', (7, 7), 'multiple'),
    ('square:64', (7, 7), '49 tokens'),
])
def test_spec_that_does_not_fit_grid_raises_naming_spec_and_grid(text, grid, fragment):
    with pytest.raises(ValueError) as info:
        sample_rank(text, 2, grid)
    msg = str(info.value)
    assert text in msg and fragment in msg


def test_square_grid_error_lists_valid_square_counts():
    with pytest.raises(ValueError, match=r'\[64, 16, 9, 4, 1\]'):
        parse_segments('square:10').validate((8, 8))
    with pytest.raises(ValueError, match=r'\[49, 16, 9, 4, 1\]'):
        parse_segments('square:25').validate((7, 7))


# ---------------------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize('text, grid', SHAPE_CASES)
def test_rank_is_dense_per_sample(text, grid):
    batch = 5
    seg = sample_segments(text, batch, grid, generator=_gen(0))
    n = grid[0] * grid[1]
    assert seg.rank.shape == (batch, n) and seg.rank.dtype == torch.int64
    assert seg.num_segments.shape == (batch,) and seg.num_segments.dtype == torch.int64
    assert len(seg.levels) == max(1, parse_segments(text).num_levels)
    assert seg.levels[0] is seg.rank
    for b in range(batch):
        values = torch.unique(seg.rank[b])
        assert torch.equal(values, torch.arange(len(values)))
        assert seg.num_segments[b].item() == len(values)


@pytest.mark.parametrize('grid', GRIDS)
def test_raster_is_arange(grid):
    n = grid[0] * grid[1]
    rank = sample_rank('patch-raster', 3, grid)
    assert torch.equal(rank, torch.arange(n).expand(3, n))


@pytest.mark.parametrize('grid', GRIDS)
def test_random_gives_a_different_permutation_per_sample(grid):
    n = grid[0] * grid[1]
    rank = sample_rank('random', 4, grid, generator=_gen(1))
    assert torch.equal(rank.sort(dim=1).values, torch.arange(n).expand(4, n))
    assert len({tuple(r.tolist()) for r in rank}) == 4


def _square_side(h: int, w: int, k: int) -> int:
    """The documented rule: the smallest side M whose squares, clipped at the border, number K."""
    return min(m for m in range(1, max(h, w) + 1) if math.ceil(h / m) * math.ceil(w / m) == k)


@pytest.mark.parametrize('text, grid', SQUARE_CASES)
def test_square_segments_are_m_by_m_blocks_clipped_at_the_border(text, grid):
    h, w = grid
    k = parse_segments(text).counts[0]
    m = _square_side(h, w, k)
    rank = sample_rank(text, 3, grid, generator=_gen(2)).view(3, h, w)
    assert (rank.amax(dim=(1, 2)) + 1 == k).all()
    for b in range(3):
        covered = torch.zeros(h, w, dtype=torch.long)
        for s in range(k):
            rows, cols = (rank[b] == s).nonzero(as_tuple=True)
            top, left = rows.min().item(), cols.min().item()
            assert top % m == 0 and left % m == 0
            bottom, right = min(top + m, h), min(left + m, w)
            # exactly the (clipped) square: its bounding box, completely filled, so contiguous
            assert rows.max() + 1 == bottom and cols.max() + 1 == right
            assert len(rows) == (bottom - top) * (right - left)
            covered[rows, cols] += 1
        assert (covered == 1).all()  # every token in exactly one square


def test_square_16_on_7x7_is_2x2_squares_with_thin_border_strips():
    rank = sample_rank('square:16', 4, (7, 7), generator=_gen(21))
    for b in range(4):
        # 3x3 full squares, 3 + 3 strips of 2 tokens along the bottom and right border, one corner token
        assert _segment_sizes(rank[b]) == [1] + [2] * 6 + [4] * 9
    rank4 = sample_rank('square:4', 4, (7, 7), generator=_gen(21))
    assert _segment_sizes(rank4[0]) == [9, 12, 12, 16]  # 7 = 4 + 3 on each axis


def test_square_16_4_groups_four_fine_squares_per_quadrant():
    seg = sample_segments('square:16-4', 6, (8, 8), generator=_gen(3))
    fine, coarse = seg.levels[0].view(6, 8, 8), seg.levels[1].view(6, 8, 8)
    for b in range(6):
        quadrants = [coarse[b, r:r + 4, c:c + 4] for r in (0, 4) for c in (0, 4)]
        assert sorted(q.unique().item() for q in quadrants) == [0, 1, 2, 3]  # each quadrant is one partition
        for r in (0, 4):
            for c in (0, 4):
                assert len(fine[b, r:r + 4, c:c + 4].unique()) == 4


def test_square_16_4_on_7x7_quadrants_contain_whole_squares():
    seg = sample_segments('square:16-4', 6, (7, 7), generator=_gen(22))
    fine, coarse = seg.levels[0].view(6, 7, 7), seg.levels[1].view(6, 7, 7)
    for b in range(6):
        # quadrants of side 4 clipped to 4 + 3: each is one partition holding exactly 4 fine squares (some clipped)
        blocks = [(slice(r, r + 4), slice(c, c + 4)) for r in (0, 4) for c in (0, 4)]
        assert sorted(coarse[b][rs, cs].unique().item() for rs, cs in blocks) == [0, 1, 2, 3]
        for rs, cs in blocks:
            inside = torch.zeros(7, 7, dtype=torch.bool)
            inside[rs, cs] = True
            squares = fine[b][inside].unique()
            assert len(squares) == 4
            assert not torch.isin(fine[b][~inside], squares).any()  # whole squares: none reaches out of its quadrant


# old code's output (captured before squares were generalised to grids they do not divide): per level, the rank of
# each square read at its top-left token, for (spec, grid, batch, seed)
SQUARE_FIXTURES = [
    ('square:16', (8, 8), 3, 0, [
        [[[12, 2, 3, 13], [14, 4, 10, 11], [8, 6, 0, 15], [9, 5, 1, 7]],
         [[11, 2, 12, 3], [14, 13, 6, 8], [9, 4, 0, 1], [7, 5, 15, 10]],
         [[3, 11, 12, 2], [0, 4, 13, 9], [1, 8, 10, 6], [7, 15, 14, 5]]]]),
    ('square:4', (8, 8), 3, 1, [[[[1, 2], [3, 0]], [[0, 2], [3, 1]], [[1, 3], [0, 2]]]]),
    ('square:16-4', (8, 8), 3, 2, [
        [[[7, 6, 0, 2], [5, 4, 1, 3], [10, 9, 12, 14], [8, 11, 13, 15]],
         [[8, 11, 15, 12], [10, 9, 14, 13], [6, 5, 1, 3], [7, 4, 2, 0]],
         [[3, 1, 9, 10], [2, 0, 11, 8], [7, 4, 13, 15], [6, 5, 14, 12]]],
        [[[1, 0], [2, 3]], [[2, 3], [1, 0]], [[0, 2], [1, 3]]]]),
    ('square:64-16-4', (8, 8), 2, 3, [
        [[[12, 15, 5, 4, 27, 25, 20, 21], [13, 14, 6, 7, 26, 24, 23, 22], [1, 2, 9, 8, 17, 16, 28, 31],
          [3, 0, 10, 11, 19, 18, 29, 30], [44, 46, 35, 34, 54, 52, 61, 60], [45, 47, 33, 32, 53, 55, 62, 63],
          [40, 42, 38, 36, 56, 58, 51, 48], [43, 41, 37, 39, 59, 57, 49, 50]],
         [[27, 26, 31, 29, 3, 2, 12, 13], [25, 24, 28, 30, 0, 1, 15, 14], [19, 16, 23, 21, 10, 11, 4, 5],
          [17, 18, 22, 20, 9, 8, 6, 7], [50, 48, 60, 61, 33, 35, 46, 47], [49, 51, 63, 62, 34, 32, 45, 44],
          [58, 59, 52, 54, 36, 38, 42, 40], [57, 56, 53, 55, 37, 39, 43, 41]]],
        [[[3, 1, 6, 5], [0, 2, 4, 7], [11, 8, 13, 15], [10, 9, 14, 12]],
         [[6, 7, 0, 3], [4, 5, 2, 1], [12, 15, 8, 11], [14, 13, 9, 10]]],
        [[[0, 1], [2, 3]], [[1, 0], [3, 2]]]]),
    ('square:15', (6, 10), 2, 4, [
        [[[4, 5, 2, 3, 11], [10, 13, 1, 0, 14], [8, 7, 12, 9, 6]],
         [[4, 2, 14, 3, 6], [5, 8, 10, 7, 12], [11, 1, 0, 9, 13]]]]),
]


@pytest.mark.parametrize('text, grid, batch, seed, expected', SQUARE_FIXTURES)
def test_square_ranks_on_divisible_grids_are_unchanged(text, grid, batch, seed, expected):
    h, w = grid
    seg = sample_segments(text, batch, grid, generator=_gen(seed))
    for level, k, per_square in zip(seg.levels, parse_segments(text).counts, expected):
        m = math.isqrt(h * w // k)
        old = torch.tensor(per_square).repeat_interleave(m, 1).repeat_interleave(m, 2)
        assert torch.equal(level.view(batch, h, w), old)


class _OpCounter(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('text', ['raster', 'random', 'square:16', 'square:16-4', 'blob:7', 'blob:11-7-3',
                                  'shuffle:7'])
def test_sampling_is_vectorized_over_the_batch(text):
    """The same number of torch ops for 1 and 64 samples: no Python loop over the batch."""
    counts = []
    for batch in (1, 64):
        with _OpCounter() as counter:
            sample_segments(text, batch, (7, 7), generator=_gen(23))
        counts.append(counter.calls)
    assert counts[0] == counts[1] > 0


# ---------------------------------------------------------------------------------------------------------- hierarchy


@pytest.mark.parametrize('text, grid', HIER_CASES)
def test_hierarchy_nests_and_partitions_are_contiguous_in_the_order(text, grid):
    batch = 6
    seg = sample_segments(text, batch, grid, generator=_gen(4))
    assert len(seg.levels) == parse_segments(text).num_levels
    for b in range(batch):
        order = seg.rank[b].argsort(stable=True)
        for lvl in range(1, len(seg.levels)):
            fine, coarse = seg.levels[lvl - 1][b], seg.levels[lvl][b]
            # each finer partition lies in exactly one coarser one
            for f in fine.unique():
                assert len(coarse[fine == f].unique()) == 1
            # coarse levels are dense 0..P-1 and follow the order of the finest segments
            values = coarse.unique()
            assert torch.equal(values, torch.arange(len(values)))
            assert (coarse[order].diff() >= 0).all()
            # the ranks inside one partition form a contiguous range
            for p in values:
                ranks = seg.rank[b][coarse == p].unique()
                assert torch.equal(ranks, torch.arange(ranks.min(), ranks.max() + 1))


def test_hierarchy_order_varies_at_every_level():
    seg = sample_segments('blob:11-5', 32, (8, 8), generator=_gen(5))
    # the partition owning the first token varies, and so does the first segment within a partition
    first_partition = seg.levels[1][:, 0]
    assert len(first_partition.unique()) > 1
    assert len({tuple(r.tolist()) for r in seg.rank}) == 32


# ---------------------------------------------------------------------------------------------------------- blobs


def test_token_positions_span_minus_two_to_two_in_raster_xy_order():
    pos = token_positions((4, 6))
    assert pos.shape == (24, 2)
    assert pos[0].tolist() == [-2.0, -2.0] and pos[-1].tolist() == [2.0, 2.0]
    assert pos[5].tolist() == [2.0, -2.0]  # end of the first row: x is the column axis
    assert torch.allclose(pos, torch.tensor(_reference_grid_points(4, 6), dtype=torch.float32))


def test_blob_gaussian_sampling_distribution():
    means, stds = sample_blob_gaussians(4000, 10, generator=_gen(6))
    assert means.shape == stds.shape == (4000, 10, 2)
    assert means.min() >= -1.75 and means.max() <= 1.75
    assert abs(means.mean().item()) < 0.02
    assert abs(means.std().item() - 3.5 / math.sqrt(12)) < 0.02
    assert stds.min() >= 0.5 and stds.max() <= 1.0
    assert abs(stds.mean().item() - 0.75) < 0.005
    assert abs((means[..., 0] - means[..., 1]).std().item() - math.sqrt(2) * 3.5 / math.sqrt(12)) < 0.03


def test_assign_to_blobs_matches_brute_force_reference():
    means, stds = sample_blob_gaussians(4, 7, generator=_gen(7))
    pos = token_positions((7, 9))
    got = assign_to_blobs(pos, means, stds)
    assert torch.equal(got, assign_to_blobs(pos.expand(4, -1, -1), means, stds))  # (M, 2) == (B, M, 2)
    compared = 0
    for b in range(4):
        ref, margins = _reference_assign(pos.tolist(), means[b], stds[b])
        for token, (r, margin) in enumerate(zip(ref, margins)):
            if margin > 1e-4:  # float32 vs float64 may only disagree on exact near-ties
                assert got[b, token].item() == r
                compared += 1
    assert compared > 0.95 * 4 * 63


@pytest.mark.parametrize('grid', [(8, 8), (7, 7), (6, 10)])
def test_blob_segments_equal_reference_assignment_with_same_seed(grid):
    batch, k = 4, 7
    # sample_segments draws the level-0 Gaussians first, so the same seed reproduces them
    means, stds = sample_blob_gaussians(batch, k, generator=_gen(8))
    rank = sample_rank(f'blob:{k}', batch, grid, generator=_gen(8))
    points = _reference_grid_points(*grid)
    for b in range(batch):
        ref, _ = _reference_assign(points, means[b], stds[b])
        assert _same_partition(rank[b], torch.tensor(ref))
        assert _segment_sizes(rank[b]) == sorted(c for c in torch.bincount(torch.tensor(ref)).tolist() if c)


@pytest.mark.parametrize('grid', [(8, 8), (14, 14), (6, 10)])
def test_blob_segments_equal_assign_to_blobs_on_token_positions(grid):
    batch, k = 256, 11
    means, stds = sample_blob_gaussians(batch, k, generator=_gen(20))
    expected = assign_to_blobs(token_positions(grid), means, stds)
    rank = sample_rank(f'blob:{k}', batch, grid, generator=_gen(20))
    assert all(_same_partition(rank[b], expected[b]) for b in range(batch))


def test_blob_hierarchy_groups_segments_by_centroid_like_reference():
    batch, grid = 3, (8, 8)
    gen = _gen(9)
    fine_g = sample_blob_gaussians(batch, 11, generator=gen)
    coarse_g = sample_blob_gaussians(batch, 5, generator=gen)
    seg = sample_segments('blob:11-5', batch, grid, generator=_gen(9))
    points = _reference_grid_points(*grid)
    for b in range(batch):
        fine, _ = _reference_assign(points, fine_g[0][b], fine_g[1][b])
        centroids = {}
        for f in set(fine):
            members = [p for p, lab in zip(points, fine) if lab == f]
            centroids[f] = (sum(p[0] for p in members) / len(members), sum(p[1] for p in members) / len(members))
        keys = sorted(centroids)
        parents, margins = _reference_assign([centroids[f] for f in keys], coarse_g[0][b], coarse_g[1][b])
        assert min(margins) > 1e-4  # no near-tie, so the float32 result must agree exactly
        parent = dict(zip(keys, parents))
        assert _same_partition(seg.rank[b], torch.tensor(fine))  # grouping must not merge the finest segments
        assert _same_partition(seg.levels[1][b], torch.tensor([parent[f] for f in fine]))


def test_empty_blobs_vanish_from_the_order():
    seg = sample_segments('blob:60', 64, (8, 8), generator=_gen(10))
    assert (seg.num_segments < 60).all()  # 60 Gaussians on 64 tokens always leave some empty
    assert torch.equal(seg.num_segments, seg.rank.amax(dim=1) + 1)


# ---------------------------------------------------------------------------------------------------------- shuffle


def _same_segment_neighbour_fraction(rank: torch.Tensor, grid) -> float:
    r = rank.view(-1, *grid)
    same = (r[:, 1:, :] == r[:, :-1, :]).float().sum() + (r[:, :, 1:] == r[:, :, :-1]).float().sum()
    pairs = r.shape[0] * ((grid[0] - 1) * grid[1] + grid[0] * (grid[1] - 1))
    return (same / pairs).item()


def test_shuffle_keeps_blob_segment_sizes_with_same_seed():
    blob = sample_rank('blob:7', 16, (8, 8), generator=_gen(11))
    shuffle = sample_rank('shuffle:7', 16, (8, 8), generator=_gen(11))
    for b in range(16):
        assert _segment_sizes(shuffle[b]) == _segment_sizes(blob[b])


def test_shuffle_destroys_spatial_coherence():
    blob = _same_segment_neighbour_fraction(sample_rank('blob:7', 64, (8, 8), generator=_gen(12)), (8, 8))
    shuffle = _same_segment_neighbour_fraction(sample_rank('shuffle:7', 64, (8, 8), generator=_gen(12)), (8, 8))
    assert blob > 0.6
    assert shuffle < 0.3 and shuffle < blob / 2


# ---------------------------------------------------------------------------------------------------------- randomness


@pytest.mark.parametrize('text', ['random', 'square:16', 'square:16-4', 'blob:7', 'blob:11-7-3', 'shuffle:7'])
def test_same_seed_same_rank_and_different_seed_different_rank(text):
    a = sample_segments(text, 8, (8, 8), generator=_gen(13))
    b = sample_segments(text, 8, (8, 8), generator=_gen(13))
    c = sample_rank(text, 8, (8, 8), generator=_gen(14))
    assert torch.equal(a.rank, b.rank)
    assert all(torch.equal(x, y) for x, y in zip(a.levels, b.levels))
    assert not torch.equal(a.rank, c)


@pytest.mark.parametrize('text', ['random', 'square:4', 'square:16', 'blob:7', 'blob:11-5', 'shuffle:7'])
def test_samples_within_a_batch_get_different_orders(text):
    rank = sample_rank(text, 8, (8, 8), generator=_gen(15))
    # square:4 has only 4! orders, so a few repeats are expected; identical orders for all samples are a bug
    assert len({tuple(r.tolist()) for r in rank}) >= 4


def test_spec_object_and_string_give_the_same_rank():
    a = sample_rank('blob:11->5', 4, (8, 8), generator=_gen(16))
    b = sample_rank(SegmentSpec('blob', (11, 5)), 4, (8, 8), generator=_gen(16))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------- devices


def test_cpu_generator_with_cpu_device_returns_cpu_tensors():
    seg = sample_segments('blob:11-5', 2, (8, 8), generator=_gen(17), device='cpu')
    assert seg.rank.device.type == 'cpu' and seg.num_segments.device.type == 'cpu'
    assert all(level.device.type == 'cpu' for level in seg.levels)


def test_output_follows_generator_device_when_device_is_omitted():
    assert sample_rank('random', 2, (4, 4), generator=_gen(18)).device == torch.device('cpu')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cpu_generator_drives_cuda_output_identically():
    cpu = sample_segments('blob:11-7-3', 4, (14, 14), generator=_gen(19))
    cuda = sample_segments('blob:11-7-3', 4, (14, 14), generator=_gen(19), device='cuda')
    assert cuda.rank.device.type == 'cuda'
    assert torch.equal(cpu.rank, cuda.rank.cpu())


# ---------------------------------------------------------------------------------------------------------- 28x28 input

NATIVE_FMNIST_SPECS = ['raster', 'random', 'square:16', 'square:4', 'square:9', 'square:16-4', 'blob:7', 'blob:11-5',
                       'blob:11-7-3', 'shuffle:7']


@pytest.fixture(scope='module')
def fmnist_28(fashion_mnist_train) -> torch.Tensor:
    """4 real Fashion-MNIST images at their native 28x28 (no padding), normalised: (4, 1, 28, 28)."""
    return (fashion_mnist_train.data[:4].float().div(255).unsqueeze(1) - 0.2860) / 0.3530


@pytest.mark.parametrize('spec', NATIVE_FMNIST_SPECS)
def test_randsac_at_28x28_keeps_segment_causality_and_trains(spec, fmnist_28):
    """img_size=28 gives a 7x7 grid of 4x4 patches; every strategy serializes it and the step stays causal."""
    model = _wrapper(spec, img_size=28).eval()
    assert model.grid_size == (7, 7)
    rank = sample_rank(spec, 2, (7, 7), generator=_gen(24))
    assert _check_segment_causality(model, fmnist_28[:2], rank) >= 3
    masks = build_masks(rank)
    assert masks.causal.shape == (2, 1, 49, 49) and masks.causal.any(dim=-1).all() and masks.memory.any(dim=-1).all()
    # one training forward/backward with the model's own sampled segments
    model.train()
    out = model(fmnist_28, generator=_gen(25))
    assert out.pred.shape == out.target.shape == (4, 49, 16) and out.rank.shape == (4, 49)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
