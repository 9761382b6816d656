"""Safety pass: every op that touches the batch must say how it keeps samples apart (an allowlist).

Per-sample gradients exist only if sample i's output depends on sample i's input alone. We follow
where the batch sits in every tensor computed from the user's inputs: a layout (dim, k) means that
dim's index is (o·B + b)·k + j for sample b (k = 1: the dim is the batch itself; a flattened (B, T)
gives k = T). Each op on a batched operand has a rule that gives its output's layout or refuses it:
pointwise ops, views keeping the batch as its own factor, reductions and scans over other dims,
matrix products not contracting it, convolutions, norms, attention, embeddings, indexing along other
dims. An op with no rule is refused (UnsupportedOpError), an op that mixes samples too
(SampleMixingError), naming the module and the op. A numerical check on each new capture
(``SampleCheck``) runs the captured graph twice with sample 0 changed, as a second line.

With K augmented views per sample (the user's (B, K, ...) arguments flattened to (B·K, ...) in the
capture), a sample's views are one sample: a dim of size K·B must hold them as layout (dim, K), rows
b·K … b·K+K−1 for sample b (the rules group them so); ops within a sample's views are fine, any other
order of a K·B dim is refused (``views_in_order``), and the numerical check changes whole samples.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

import sympy
import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from dpcompile.errors import DPCompileError, SampleMixingError, UnsupportedOpError

from .meta import SITE, PassContext, resolved_batch, shape_of_value
from .rules.one_sample import batch_of_one_in, guards_batch_of_one, linear_guard_truth
from .symbolic import same, simplified

aten, prims = torch.ops.aten, torch.ops.prims
Layout = tuple[int, sympy.Expr]  # (dim, k): the batch's position in a tensor


class Mixing(Exception):
    """An op's operands hold the batch where the op would mix samples (the message says how)."""


class NoRule(Exception):
    """An op on a batched operand that no rule accepts."""


def batch_factor(size: sympy.Expr, batch: sympy.Expr) -> sympy.Expr | None:
    """m with size = B·m and m a whole number free of B, else None."""
    if batch == 0:
        return None
    m = simplified(size / batch)
    if (m.free_symbols & batch.free_symbols) or sympy.denom(sympy.together(m)) != 1 or m == 0:
        return None
    return m


def _shape(x) -> tuple[sympy.Expr, ...]:
    return shape_of_value(x.meta["val"])


def _tensor(x) -> bool:
    return isinstance(x, fx.Node) and isinstance(x.meta.get("val"), torch.Tensor)


def arg(node: fx.Node, name: str, default=None):
    """An op's argument by its schema name (positional or keyword), or the schema's default."""
    schema = getattr(node.target, "_schema", None)
    if name in node.kwargs:
        return node.kwargs[name]
    if schema is None:
        return default
    for i, a in enumerate(schema.arguments):
        if a.name == name:
            if i < len(node.args) and not a.kwarg_only:
                return node.args[i]
            return a.default_value if a.has_default_value() else default
    return default


def _dims(value, rank: int) -> list[int]:
    """A dim argument (int, list, None or [] meaning all dims) as non-negative dims."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return list(range(rank))
    return [d % rank for d in ([value] if isinstance(value, int) else value)] if rank else []


class Layouts:
    """The layouts found so far (node -> Layout, or a tuple of them for ops with several outputs)."""

    def __init__(self, batch: sympy.Expr):
        self.batch, self.of = batch, {}
        self.trainable: set[fx.Node] | None = None  # the trainable parameters' placeholders, where known
        # values computed from an arange over the batch size: True if computed on, False for the arange through views
        # (batch_size_uses); `identity`, those of them that are 0, 1, …, B − 1 (diagonal_gather)
        self.positions: dict[fx.Node, bool] = {}
        self.identity: set[fx.Node] = set()

    def get(self, x) -> Layout | None:
        lay = self.of.get(x) if isinstance(x, fx.Node) else None
        return lay if lay and isinstance(lay[0], int) else None

    def batched(self, node: fx.Node) -> list[fx.Node]:
        """node's operands that carry the batch (data computed from the user's inputs)."""
        return [x for x in tree_leaves((node.args, node.kwargs)) if isinstance(x, fx.Node) and x in self.of]

    def by_size(self, value, size: sympy.Expr, k: sympy.Expr, near: int | None = None) -> Layout | None:
        """The layout of an output whose batch dim is the one of size `size` (the dim `near` if it fits)."""
        if not isinstance(value, torch.Tensor):
            return None
        shape = shape_of_value(value)
        if near is not None and near < len(shape) and same(shape[near], size):
            return (near, k)
        hits = [d for d, s in enumerate(shape) if same(s, size)]
        if len(hits) == 1:
            return (hits[0], k)
        hits = [d for d, s in enumerate(shape) if batch_factor(s, self.batch) is not None]
        return (hits[0], k) if len(hits) == 1 and same(shape[hits[0]], size) else None

    def each_output(self, node: fx.Node, lay: Layout, src: fx.Node):
        """The same batch dim in every tensor output (found by its size): tuple outputs too."""
        size = _shape(src)[lay[0]]
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):
            return tuple(self.by_size(v, size, lay[1], lay[0]) for v in val)
        return self.by_size(val, size, lay[1], lay[0])


# ------------------------------------------------------------------------------------------------
# Rules: (node, layouts) -> the output's layout; raise Mixing when the op would mix samples
# ------------------------------------------------------------------------------------------------

def aligned(node: fx.Node, L: Layouts, operands: list, out_rank: int) -> Layout | None:
    """Broadcasting operands: each batched one's batch dim, right-aligned, must land on the same
    output dim with the same k, and must not be broadcast."""
    found = None
    for x in operands:
        lay = L.get(x)
        if lay is None or not _tensor(x):
            continue
        shape = _shape(x)
        d = lay[0] + out_rank - len(shape)
        if d < 0:  # more dims in than out: a batch dim counted from the right would fall off
            raise NoRule("its result has fewer dims than its batched operand")
        if found is not None and (found[0] != d or not same(found[1], lay[1])):
            raise Mixing("combines operands that hold the batch in different places (element i of one meets "
                         "another sample's element of the other)")
        found = (d, lay[1])
    return found


def complex_view(node: fx.Node, L: Layouts):
    """view_as_real adds a last dim (real, imaginary), view_as_complex takes it away: the dims before it, the batch's
    among them, stay where they are, counted from the left (right-aligned, as broadcasting counts, they would move)."""
    lay = L.get(node.args[0])
    if node.target is aten.view_as_complex.default and lay[0] == len(_shape(node.args[0])) - 1:
        raise Mixing("pairs the batch's rows as the real and imaginary parts of one value")
    return lay


def pointwise(node: fx.Node, L: Layouts):
    """Elementwise with broadcasting: the batch stays where it is."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise NoRule("an elementwise op without a tensor result")
    rank = val.dim()
    lay = aligned(node, L, tree_leaves((node.args, node.kwargs)), rank)
    if isinstance(val, torch.Tensor) and lay is not None and batch_factor(shape_of_value(val)[lay[0]], L.batch) is None:
        raise Mixing("broadcasts or reduces the batch dim")
    return lay


def first_operand(node: fx.Node, L: Layouts):
    """Ops elementwise in their first operand whose other operands are per-channel constants."""
    if any(L.get(x) is not None for x in L.batched(node) if x is not node.args[0]):
        raise NoRule("has a batched operand other than its first")
    return L.each_output(node, L.get(node.args[0]), node.args[0])


def view(node: fx.Node, L: Layouts):
    """A reshape keeps samples apart iff some output dim holds the batch as its own factor: the
    batch's inner extent (k times the sizes after its dim) is k' times the sizes after that dim."""
    src = node.args[0]
    (d, k), shape, out = L.get(src), _shape(src), _shape(node)
    inner = k * sympy.Mul(*shape[d + 1:])
    for e, size in enumerate(out):
        k2 = simplified(inner / sympy.Mul(*out[e + 1:]))
        if k2.free_symbols & L.batch.free_symbols or sympy.denom(sympy.together(k2)) != 1 or k2 == 0:
            continue
        if batch_factor(size, L.batch * k2) is not None:
            return (e, k2)
    raise Mixing(f"reshapes {list(shape)} to {list(out)}, which splits the batch dim or moves other values "
                 "between samples")


def _strides(value) -> tuple[sympy.Expr, ...]:
    return tuple(s.node.expr if isinstance(s, torch.SymInt) else sympy.Integer(int(s)) for s in value.stride())


def _contiguous(value) -> bool:
    """Whether a (fake) tensor's strides are row-major for its sizes (size-one dims ignored)."""
    shape, expected = shape_of_value(value), sympy.Integer(1)
    for size, stride in reversed(list(zip(shape, _strides(value)))):
        if size != 1 and not same(stride, expected):
            return False
        expected = expected * size
    return True


def as_strided(node: fx.Node, L: Layouts):
    """as_strided that re-reads a row-major tensor row-major from offset 0 is a reshape."""
    src, val = node.args[0], node.meta["val"]
    offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("storage_offset", 0)
    if not (offset in (0, None) and _contiguous(src.meta["val"]) and _contiguous(val)
            and same(sympy.Mul(*_shape(src)), sympy.Mul(*_shape(node)))):
        raise NoRule("it is not a row-major reshape of a row-major tensor")
    return view(node, L)


def expand(node: fx.Node, L: Layouts):
    return aligned(node, L, [node.args[0]], len(_shape(node)))


def unsqueeze(node: fx.Node, L: Layouts):
    d, k = L.get(node.args[0])
    dim = node.args[1] % (len(_shape(node.args[0])) + 1)
    return (d + (dim <= d), k)


def squeeze(node: fx.Node, L: Layouts):
    d, k = L.get(node.args[0])
    shape = _shape(node.args[0])
    dims = _dims(node.args[1] if len(node.args) > 1 else None, len(shape))
    return (d - sum(1 for e in dims if e < d and shape[e] == 1), k)


def permute(node: fx.Node, L: Layouts):
    d, k = L.get(node.args[0])
    rank = len(_shape(node.args[0]))
    if node.target is aten.permute.default:
        order = [p % rank for p in node.args[1]]
    else:
        a, b = (node.args[1] % rank, node.args[2] % rank) if node.target is aten.transpose.int else (0, 1)
        order = list(range(rank))
        if rank > 1:
            order[a], order[b] = order[b], order[a]
    return (order.index(d), k)


def picks(node: fx.Node, L: Layouts):
    """select/slice/narrow/split/unbind/unfold along a dim: allowed along other dims than the batch's."""
    src = node.args[0]
    d, k = L.get(src)
    shape = _shape(src)
    dim = arg(node, "dim", None)
    dim = (arg(node, "dimension", 0) if dim is None else dim) % len(shape)
    if dim == d:
        full = node.target in (aten.slice.Tensor, aten.narrow.default) and same(_shape(node)[d], shape[d])
        if not full:
            raise Mixing(f"picks part of dim {d}, which holds the batch")
    if node.target is aten.select.int or node.target is aten.unbind.int:
        d = d - (dim < d)
    val = node.meta["val"]
    return tuple((d, k) for _ in val) if isinstance(val, (tuple, list)) else (d, k)


def reverse(node: fx.Node, L: Layouts):
    """flip / prims.rev / roll: allowed along other dims."""
    d, k = L.get(node.args[0])
    rank = len(_shape(node.args[0]))
    dims = arg(node, "dims", None)
    if dims is None:
        dims = node.args[1]
    if not dims or d in _dims(dims, rank):
        raise Mixing(f"reorders along dim {d}, which holds the batch")
    return (d, k)


def reduction(node: fx.Node, L: Layouts):
    """Reductions, scans, sorts and softmax over dims other than the batch's."""
    src = node.args[0]
    d, k = L.get(src)
    rank = len(_shape(src))
    dims = arg(node, "dim", None)
    dims = _dims(dims, rank) if node.target not in WHOLE else list(range(rank))
    if d in dims:
        raise Mixing(f"reduces, scans or sorts across dim(s) {dims}, and dim {d} holds the batch")
    val = node.meta.get("val")
    out = lambda v: None if not isinstance(v, torch.Tensor) else (d if v.dim() == rank else d - sum(e < d for e in dims), k)  # noqa: E731
    return tuple(out(v) for v in val) if isinstance(val, (tuple, list)) else out(val)


def matmul(node: fx.Node, L: Layouts):
    """mm/addmm/bmm/baddbmm: the contracted dim must not hold the batch; rows of A or columns of B
    may; for bmm the leading dim may, in both alike."""
    batched3 = node.target in (aten.bmm.default, aten.baddbmm.default)
    a, b = node.args[1:3] if node.target in (aten.addmm.default, aten.baddbmm.default) else node.args[:2]
    la, lb = L.get(a), L.get(b)
    rank = 3 if batched3 else 2
    out = []
    if la is not None:
        if la[0] == rank - 1:
            raise Mixing("contracts dim {} of its first operand, which holds the batch".format(la[0]))
        out.append(la)
    if lb is not None:
        if lb[0] == rank - 2:
            raise Mixing("contracts dim {} of its second operand, which holds the batch".format(lb[0]))
        out.append(lb)
    if len(out) == 2 and (out[0][0] != out[1][0] or out[0][0] != 0 or not same(out[0][1], out[1][1])):
        raise Mixing("multiplies two batched operands whose batches meet across samples (a pairwise product)")
    lay = out[0] if out else None
    if node.target in (aten.addmm.default, aten.baddbmm.default) and L.get(node.args[0]) is not None:
        bias = aligned(node, L, [node.args[0]], rank)
        if lay is not None and (bias[0] != lay[0] or not same(bias[1], lay[1])):
            raise Mixing("adds a batched term whose batch is not where the product's is")
        lay = bias
    return lay


def trilinear(node: fx.Node, L: Layouts):
    """_trilinear (nn.Bilinear): each operand unsqueezed at its expand dims to one rank, multiplied elementwise, summed
    over sumdim. A batched operand's batch dim lands where every other batched operand's does; it must not be summed."""
    operands, expands, sumdim = node.args[:3], node.args[3:6], list(node.args[6])
    rank = len(_shape(operands[0])) + len(expands[0])
    found = None
    for x, expand in zip(operands, expands):
        lay = L.get(x)
        if lay is None:
            continue
        d = [e for e in range(rank) if e not in expand][lay[0]]
        if found is not None and (found[0] != d or not same(found[1], lay[1])):
            raise Mixing("multiplies operands that hold the batch in different places")
        found = (d, lay[1])
    if found is None:
        return None
    if found[0] in sumdim:
        raise Mixing(f"sums over dim(s) {sumdim}, and dim {found[0]} holds the batch")
    out = found[0] - sum(e < found[0] for e in sumdim)
    if batch_factor(shape_of_value(node.meta["val"])[out], L.batch) is None:
        raise Mixing("broadcasts the batch dim")
    return out, found[1]


def convolution(node: fx.Node, L: Layouts):
    """Convolution: samples along dim 0 of the input, weight and bias per model."""
    lay = L.get(node.args[0])
    if lay is None or lay[0] != 0 or any(L.get(x) is not None for x in node.args[1:3]):
        raise Mixing("convolves a tensor whose batch is not its dim 0 (or a batched weight)")
    return lay


def per_sample_norm(node: fx.Node, L: Layouts):
    """layer/group norm: statistics per sample (layer norm: over the trailing normalised dims)."""
    src = node.args[0]
    lay = L.get(src)
    if any(L.get(x) is not None for x in node.args[1:3]):
        raise NoRule("has a batched weight or bias")
    rank = len(_shape(src))
    if node.target is aten.native_group_norm.default:
        ok = lay[0] == 0
    else:
        ok = lay[0] < rank - len(node.args[1])
    if not ok:
        raise Mixing(f"normalises over dims that include dim {lay[0]}, which holds the batch")
    return tuple(L.by_size(v, _shape(src)[lay[0]], lay[1], lay[0]) for v in node.meta["val"])


def batch_norm(node: fx.Node, L: Layouts):
    """Batch norm: in eval mode running statistics (per channel, dim 1); in training mode statistics
    over every dim but 1, so only a batch folded into the channels (instance norm) is per sample."""
    src = node.args[0]
    lay = L.get(src)
    training = node.target is not aten._native_batch_norm_legit_no_training.default and arg(node, "training", False)
    if any(L.get(x) is not None for x in node.args[1:5] if isinstance(x, fx.Node)):
        raise NoRule("has batched weights or statistics")
    if training and lay[0] != 1:
        raise Mixing(f"normalises with statistics over the batch (dim {lay[0]})")
    return tuple(L.by_size(v, _shape(src)[lay[0]], lay[1], lay[0]) for v in node.meta["val"])


def attention(node: fx.Node, L: Layouts):
    """Scaled dot-product attention: the batch in a leading dim (not the sequence or feature dims)."""
    q = node.args[0]
    rank = len(_shape(q))
    lay = aligned(node, L, [x for x in tree_leaves((node.args, node.kwargs)) if _tensor(x)], rank)
    if lay is None or lay[0] >= rank - 2:
        raise Mixing("attends across the batch (it is in the sequence or feature dims)")
    size = next(_shape(x)[lay[0] - rank + len(_shape(x))] for x in L.batched(node) if _tensor(x))
    val = node.meta["val"]
    return tuple(L.by_size(v, size, lay[1], lay[0]) for v in val) if isinstance(val, (tuple, list)) \
        else L.by_size(val, size, lay[1], lay[0])


def embedding(node: fx.Node, L: Layouts):
    """embedding(weight, indices): a row per index, the indices' batch kept. With scale_grad_by_freq its backward
    divides each row's gradient by that index's count over the whole batch, which mixes samples: one sample then
    rescaled the others' terms (neighbouring batches' releases 1.16·R apart), seen only here, in the forward's flag
    (the captured backward has the counts decomposed into index_put ops)."""
    if L.get(node.args[0]) is not None:
        raise NoRule("looks up a batched table")
    weight = node.args[0]
    frozen = L.trainable is not None and weight.op == "placeholder" and weight not in L.trainable
    if arg(node, "scale_grad_by_freq", False) and not frozen:
        raise Mixing("with scale_grad_by_freq=True divides each row's weight gradient by its index's count over "
                     "the whole batch (pass scale_grad_by_freq=False)")
    return L.get(node.args[1])


def embedding_bag(node: fx.Node, L: Layouts):
    """One bag per sample: 2-D input flattened batch-first, offsets from sizes only."""
    weight, indices, offsets = node.args[:3]
    lay = L.get(indices)
    if L.get(weight) is not None or L.get(offsets) is not None or lay is None or lay[0] != 0:
        raise NoRule("has a batched table or offsets")
    factors = [batch_factor(shape_of_value(v)[0], L.batch) if v.dim() else None for v in node.meta["val"]]
    return tuple(None if k is None else (0, k) for k in factors)


def index_select(node: fx.Node, L: Layouts):
    src, dim, index = node.args[:3]
    ls, li = L.get(src), L.get(index)
    dim %= len(_shape(src))
    if ls is not None and (li is not None or dim == ls[0]):
        raise Mixing(f"selects along dim {dim} of a tensor whose batch is dim {ls[0]}, or by batched indices")
    return ls if ls is not None else (dim, li[1])


def gather(node: fx.Node, L: Layouts):
    """gather along a dim other than the batch's, with indices holding the batch in the same dim."""
    src, dim, index = node.args[:3]
    ls, li = L.get(src), L.get(index)
    dim %= len(_shape(src))
    if ls is not None and (dim == ls[0] or (li is not None and li != ls)
                           or (li is None and not same(_shape(index)[ls[0]], _shape(src)[ls[0]]))):
        raise Mixing(f"gathers along dim {dim} or with indices not aligned with the batch (dim {ls[0]})")
    return ls or li


def index(node: fx.Node, L: Layouts):
    """x[i, j, ...]: tensor indices only on dims other than the batch's; a batched index into a
    batch-free tensor (a lookup) keeps the index's batch."""
    src, indices = node.args[:2]
    ls = L.get(src)
    used = [e for e, i in enumerate(indices) if i is not None]
    batched = [i for i in indices if i is not None and L.get(i) is not None]
    rank = len(torch.broadcast_shapes(*[i.meta["val"].shape for i in indices if i is not None]))
    adjacent = used == list(range(used[0], used[-1] + 1))
    if ls is None:
        lay = aligned(node, L, batched, rank)
        return ((used[0] if adjacent else 0) + lay[0], lay[1])
    d = ls[0]
    if d in used and not batched and (lay := diagonal_gather(node, L, d, rank)) is not None:
        return (used[0] + lay if adjacent else lay, ls[1])
    if d in used or batched:
        raise Mixing(f"indexes dim {d}, which holds the batch, or indexes with batched indices")
    if adjacent:
        return (d if d < used[0] else d - len(used) + rank, ls[1])
    return (rank + sum(1 for e in range(d) if e not in used), ls[1])


def diagonal_gather(node: fx.Node, L: Layouts, d: int, rank: int) -> int | None:
    """x[arange(B)[:, None], j]: the batch dim d indexed by the arange over the batch (L.identity), the other indices
    free of the batch and of size one along its dim: row i of the result is row i of x, as Hugging Face builds a
    padding mask from a 2-D attention_mask. The batch's dim among the broadcast indices' dims, else None."""
    indices = node.args[1]
    rows = indices[d]
    if rows not in L.identity or L.get(node.args[0])[1] != 1:
        return None
    shape = _shape(rows)
    dims = [rank - len(shape) + e for e, size in enumerate(shape) if same(size, L.batch)]
    if len(dims) != 1:
        return None
    for other in indices:
        if other is None or other is rows:
            continue
        other_shape = (sympy.Integer(1),) * (rank - len(_shape(other))) + tuple(_shape(other))
        if other_shape[dims[0]] != 1:
            return None
    return dims[0]


def scatter(node: fx.Node, L: Layouts):
    """scatter/index_add/index_copy/slice_scatter/select_scatter along a dim other than the batch's,
    every batched operand holding the batch in the same dim as the result."""
    base, dim = node.args[0], arg(node, "dim", 0)
    rank = len(_shape(base))
    dim %= rank
    result = L.get(base)
    for x in L.batched(node)[0:]:
        lay = L.get(x)
        if lay is None or x is base:
            continue
        d = lay[0] + (node.target is aten.select_scatter.default and dim <= lay[0])
        if x is arg(node, "index") and node.target in (aten.index_add.default, aten.index_copy.default):
            raise Mixing("scatters with batched indices")
        if result is not None and (result[0] != d or not same(result[1], lay[1])):
            raise Mixing("writes values of one sample into another sample's rows")
        if result is None and not same(_shape(base)[d], _shape(x)[lay[0]]):
            raise Mixing("writes batched values into a tensor that has no row per sample (it sums samples)")
        result = (d, lay[1])
    if result[0] == dim and not _whole_slice_written(node, dim):
        raise Mixing(f"writes along dim {dim}, which holds the batch")
    return result


def _whole_slice_written(node: fx.Node, dim: int) -> bool:
    """A slice_scatter whose source spans the whole dim (`y = x[:, :c]; y += s` functionalised: a `:` on the batch
    dim is a full slice): every row is replaced by the same row of the source, which holds the batch in that dim."""
    return node.target is aten.slice_scatter.default and same(_shape(node.args[0])[dim], _shape(node.args[1])[dim])


def index_put(node: fx.Node, L: Layouts):
    """x[i] = v with indices on dims other than the batch's, indices and values free of the batch."""
    base, indices = node.args[:2]
    lay = L.get(base)
    if lay is None or any(L.get(x) is not None for x in L.batched(node) if x is not base) \
            or (lay[0] < len(indices) and indices[lay[0]] is not None):
        raise Mixing("writes with batched indices or values, or along the batch dim")
    return lay


def concat(node: fx.Node, L: Layouts):
    """cat/stack along a dim other than the batch's, every batched piece holding it in the same dim."""
    pieces, dim = node.args[0], arg(node, "dim", 0)
    rank = len(_shape(pieces[0]))
    lay = aligned(node, L, [p for p in pieces if len(_shape(p)) == rank], rank)
    if node.target is aten.stack.default:
        dim %= rank + 1
        if lay is None or any(not same(_shape(p)[lay[0]], _shape(pieces[0])[lay[0]]) for p in pieces):
            raise Mixing("stacks tensors whose batch dims differ")
        return (lay[0] + (dim <= lay[0]), lay[1])
    dim %= rank
    if lay is None or dim == lay[0] or any(len(_shape(p)) == rank and not same(_shape(p)[lay[0]],
                                                                                   _shape(node)[lay[0]]) for p in pieces):
        raise Mixing(f"concatenates along dim {dim}, which holds the batch, or with pieces of another batch size")
    return lay


def spatial(n: int) -> Callable:
    """Pools, padding and upsampling over the last n dims: the batch must be in a leading dim."""
    def rule(node: fx.Node, L: Layouts):
        lay = L.get(node.args[0])
        rank = len(_shape(node.args[0]))
        if any(L.get(x) is not None for x in L.batched(node) if x is not node.args[0]):
            raise NoRule("has a batched operand other than its first")
        if lay[0] >= rank - n:
            raise Mixing(f"works over the last {n} dims, and dim {lay[0]} holds the batch")
        return L.each_output(node, lay, node.args[0])
    return rule


def window_pool(node: fx.Node, L: Layouts):
    """A pool whose window covers the last len(kernel_size) dims (prims' low-memory max pool, any rank)."""
    return spatial(len(node.args[1]))(node, L)


def pad(node: fx.Node, L: Layouts):
    """constant_pad_nd: padding dims other than the batch's."""
    lay = L.get(node.args[0])
    rank, amounts = len(_shape(node.args[0])), node.args[1]
    padded = [rank - 1 - i // 2 for i, a in enumerate(amounts) if a != 0]
    if lay[0] in padded:
        raise Mixing(f"pads dim {lay[0]}, which holds the batch")
    return lay


def triangle(node: fx.Node, L: Layouts):
    """tril/triu act on the last two dims."""
    lay = L.get(node.args[0])
    if lay[0] >= len(_shape(node.args[0])) - 2:
        raise Mixing("masks a matrix whose rows or columns hold the batch")
    return lay


def getitem(node: fx.Node, L: Layouts):
    lay = L.of.get(node.args[0])
    return lay[node.args[1]] if isinstance(lay, tuple) and lay and not isinstance(lay[0], int) else lay


def buffer_write(node: fx.Node, L: Layouts):
    """copy_ into an input: a batched value only into a batched input, same layout."""
    dst, src = node.args[:2]
    if L.get(src) is not None and L.get(dst) is None:
        raise Mixing("stores a value computed from the batch in a buffer or constant, so later batches would "
                     "depend on these samples")
    if L.get(src) is not None and (L.get(dst)[0] != L.get(src)[0] or not same(L.get(dst)[1], L.get(src)[1])):
        raise Mixing("writes one sample's values into another sample's rows")
    return L.get(dst)


def no_tensor(node: fx.Node, L: Layouts):
    """Shape queries (sym_size and friends): they read no sample's values."""
    return None


def scalar_of_batch(node: fx.Node, L: Layouts):
    raise Mixing("turns a batched value into one Python number used for every sample")


SAME = (aten.clone.default, aten._to_copy.default, aten.alias.default, aten.detach.default, aten.contiguous.default,
        aten.lift_fresh_copy.default, aten.copy.default, aten.masked_fill.Tensor, aten.masked_fill.Scalar,
        aten.bernoulli.p, aten.bernoulli.default, aten.native_dropout.default, aten.where.self,
        prims.convert_element_type.default, aten.positive.default, aten.dropout.default)
DATA_FREE = (aten.zeros_like.default, aten.ones_like.default, aten.empty_like.default, aten.full_like.default,
             aten.rand_like.default, aten.randn_like.default, aten.randint_like.default, aten.new_zeros.default,
             aten.new_ones.default, aten.new_empty.default, aten.new_full.default, aten.fill.Scalar,
             aten.zero.default, aten.new_empty_strided.default)
WHOLE = (aten.sum.default, aten.mean.default, aten.max.default, aten.min.default, aten.prod.default,
         aten.median.default, aten.nanmedian.default, aten.all.default, aten.any.default, aten.std.default,
         aten.var.default)
REDUCTIONS = WHOLE + (
    aten.sum.dim_IntList, aten.mean.dim, aten.var.correction, aten.var_mean.correction, aten.std.correction,
    aten.std_mean.correction, aten.amax.default, aten.amin.default, aten.max.dim, aten.min.dim, aten.prod.dim_int,
    aten.logsumexp.default, aten.argmax.default, aten.argmin.default, aten.cumsum.default, aten.cumprod.default,
    aten.cummax.default, aten.cummin.default, aten.logcumsumexp.default, aten.sort.default, aten.sort.stable,
    aten.topk.default, aten.kthvalue.default, aten.median.dim, aten.nanmedian.dim, aten.mode.default,
    aten._softmax.default, aten._log_softmax.default, aten.softmax.int, aten.log_softmax.int, aten.any.dims,
    aten.any.dim, aten.all.dim, aten.all.dims, aten.linalg_vector_norm.default, aten.nansum.default,
    aten.count_nonzero.dim_IntList, aten.aminmax.default)
RULES: dict = {
    **{op: reduction for op in REDUCTIONS},
    **{op: no_tensor for op in (aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default,
                                 aten.sym_storage_offset.default, aten._assert_async.msg,
                                 aten._functional_assert_async.msg)},
    **{op: view for op in (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.view_copy.default)},
    **{op: permute for op in (aten.permute.default, aten.transpose.int, aten.t.default)},
    **{op: picks for op in (aten.select.int, aten.slice.Tensor, aten.narrow.default, aten.split.Tensor,
                            aten.split_with_sizes.default, aten.unbind.int, aten.unfold.default, aten.chunk.default)},
    **{op: reverse for op in (aten.flip.default, prims.rev.default, aten.roll.default)},
    **{op: matmul for op in (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default)},
    **{op: per_sample_norm for op in (aten.native_layer_norm.default, aten.native_group_norm.default)},
    **{op: batch_norm for op in (aten.native_batch_norm.default, aten._native_batch_norm_legit_functional.default,
                                 aten._native_batch_norm_legit.default, aten._native_batch_norm_legit.no_stats,
                                 aten._native_batch_norm_legit_no_training.default)},
    **{getattr(aten, name).default: attention for name in (
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
        "scaled_dot_product_attention", "_scaled_dot_product_attention_math") if hasattr(aten, name)},
    **{op: scatter for op in (aten.scatter.src, aten.scatter.value, aten.scatter.reduce, aten.scatter.value_reduce,
                              aten.scatter_add.default, aten.scatter_reduce.two, aten.index_add.default,
                              aten.index_copy.default, aten.slice_scatter.default, aten.select_scatter.default)},
    **{op: spatial(n) for n, ops in {
        1: ("avg_pool1d", "adaptive_avg_pool1d", "reflection_pad1d", "replication_pad1d", "upsample_nearest1d",
            "upsample_linear1d"),
        2: ("avg_pool2d", "max_pool2d_with_indices", "_adaptive_avg_pool2d", "adaptive_max_pool2d",
            "reflection_pad2d", "replication_pad2d", "upsample_nearest2d", "upsample_bilinear2d", "_low_memory_max_pool2d_with_offsets"),
        3: ("avg_pool3d", "max_pool3d_with_indices", "_adaptive_avg_pool3d", "adaptive_max_pool3d",
            "reflection_pad3d", "replication_pad3d", "upsample_nearest3d", "upsample_trilinear3d"),
    }.items() for name in ops if hasattr(aten, name) for op in [getattr(aten, name).default]},
    aten.as_strided.default: as_strided, aten.expand.default: expand, aten.unsqueeze.default: unsqueeze, aten.squeeze.dim: squeeze,
    aten.squeeze.dims: squeeze, aten.squeeze.default: squeeze, aten.convolution.default: convolution,
    aten.embedding.default: embedding, aten._embedding_bag.default: embedding_bag,
    aten._embedding_bag_forward_only.default: embedding_bag, aten.index_select.default: index_select,
    aten.gather.default: gather, aten.index.Tensor: index, aten._unsafe_index.Tensor: index,
    aten.index_put.default: index_put, aten._unsafe_index_put.default: index_put, aten.cat.default: concat,
    aten.stack.default: concat, aten.constant_pad_nd.default: pad, aten.tril.default: triangle,
    aten.triu.default: triangle, aten.copy_.default: buffer_write, aten._prelu_kernel.default: first_operand,
    aten._local_scalar_dense.default: scalar_of_batch, aten.repeat.default: expand,
    aten._trilinear.default: trilinear, aten.view_as_real.default: complex_view,
    aten.view_as_complex.default: complex_view, aten.bucketize.Tensor: first_operand,
}
# Ops registered only once inductor's lowering is imported (inductor's max-pool decomposition), by name.
RULES_BY_NAME = {"prims._low_memory_max_pool_with_offsets.default": window_pool}


def where(node: fx.Node) -> str:
    """The module path and class a forward node came from."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<model>"
    path, cls = list(stack.values())[-1]
    path = re.sub(r"^L\['[^']+'\]\.?", "", str(path)) or "<model>"
    return f"'{path}' ({getattr(cls, '__name__', cls)})"


def rule_of(node: fx.Node) -> Callable | None:
    """The rule that accepts node on batched operands (pointwise ops by their tag)."""
    if node.target in RULES:
        return RULES[node.target]
    if str(node.target) in RULES_BY_NAME:
        return RULES_BY_NAME[str(node.target)]
    if node.target in SAME or torch.Tag.pointwise in getattr(node.target, "tags", ()):
        return pointwise
    if getattr(node.target, "__name__", "") == "getitem":
        return getitem
    return None


def _input_layout(node: fx.Node, batch: sympy.Expr) -> Layout | None:
    """A user input holds the batch in dim 0 (or, failing that, its first dim of a batch size)."""
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        return None
    dims = [d for d, s in enumerate(shape_of_value(value)) if s.free_symbols & batch.free_symbols or s == batch]
    return (dims[0], sympy.Integer(1)) if dims else None


LOSS_HINT = (" If this is the loss computed inside the model, return per-sample outputs instead (the logits, or "
             "the loss with reduction='none') and compute the mean or sum over the batch outside the DP model: "
             "loss = F.cross_entropy(dp_model(x), y); each sample's gradient is clipped before the batch's are summed.")


def _refusal(node: fx.Node, exc: Exception, note: str = "") -> DPCompileError:
    op = str(node.target)
    if isinstance(exc, Mixing):
        val = node.meta.get("val")
        hint = (" BatchNorm in training mode normalises with statistics of the whole batch: call "
                "dpcompile.fix(model) to replace it with GroupNorm, or put it in eval mode."
                if "norm" in op or "BatchNorm" in where(node) else
                " Make the computation per sample (no reductions, sorting, indexing or reshaping across the batch)."
                + (LOSS_HINT if rule_of(node) is reduction and isinstance(val, torch.Tensor) and val.dim() == 0
                   else ""))
        return SampleMixingError(f"module {where(node)}: {op} {exc}, so it mixes samples: per-sample gradients "
                                 f"do not exist and no clipping bound would hold.{note}{hint}")
    reason = f" ({exc})" if str(exc) else ""
    return UnsupportedOpError(
        f"module {where(node)}: {op} takes an operand computed from the batch and no rule says how it keeps "
        f"samples apart{reason}, so per-sample gradients cannot be shown to exist. Make the computation per "
        "sample with supported ops (elementwise, reductions over other dims, matrix products, convolutions, "
        "norms, attention, embeddings), or add a rule to passes/safety.py.")


_ASSERT_OPS = (("_assert_async", "msg"), ("_assert_async", "default"), ("_functional_assert_async", "msg"),
               ("_assert_scalar", "default"))
ASSERTS = {op for name, overload in _ASSERT_OPS if (op := getattr(getattr(aten, name, None), overload, None))}


def assertion_only(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose values only feed input checks (one_hot's range assert): they reach no output."""
    only: set[fx.Node] = set()
    for node in reversed(graph.nodes):
        if node.users and all(u.target in ASSERTS or u in only for u in node.users):
            only.add(node)
    return only


def check_sample_independence(forward: fx.GraphModule, ctx: PassContext,
                              user_inputs: tuple[int, ...] | None = None) -> fx.GraphModule:
    """Raise SampleMixingError / UnsupportedOpError at the first node on the batch that no rule accepts."""
    batch = resolved_batch(forward, ctx.batch)
    nodes = [n for n in forward.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    if not batch.free_symbols and batch <= 1 or nodes and guards_batch_of_one(nodes[0], batch):
        # a graph for one sample (its guards recompile any other batch size): nothing to mix, but nothing of the
        # sample may be stored either
        return refuse_stored_sample(forward, user_inputs, batch)
    layouts = Layouts(batch)
    placeholders = list(forward.graph.find_nodes(op="placeholder"))
    if user_inputs is not None:  # the capture's inputs in order: the trainable parameters' placeholders are known
        layouts.trainable = {placeholders[p.output_index] for p in ctx.params if p.output_index < len(placeholders)}
    for i, node in enumerate(placeholders):
        if (user_inputs is None or i in user_inputs) and (lay := _input_layout(node, batch)) is not None:
            layouts.of[node] = lay
    checks = assertion_only(forward.graph)
    for node in forward.graph.nodes:
        if node.op == "call_function" and node not in checks:
            batch_size_uses(node, layouts)
        if node.op != "call_function" or not layouts.batched(node) or node.target in DATA_FREE or node in checks:
            continue
        try:
            lay = applied_rule(node, layouts)
        except (Mixing, NoRule) as exc:
            raise _refusal(node, exc, _merged_batch(node, layouts, ctx.views)) from exc.__cause__
        if ctx.views > 1:
            views_in_order(node, lay, batch, ctx.views)
        if lay and (isinstance(lay[0], int) or any(lay)):
            layouts.of[node] = lay
    return forward


def applied_rule(node: fx.Node, layouts: Layouts):
    """The layout of node's result by its op's rule; Mixing, or NoRule where no rule applies (none for the op, or one
    that cannot read this call's arguments: the cause chained)."""
    rule = rule_of(node)
    if rule is None:
        raise NoRule("")
    try:
        return rule(node, layouts)
    except (Mixing, NoRule):
        raise
    except Exception as exc:
        raise NoRule(f"its arguments are not understood: {exc}") from exc


def refuse_stored_sample(forward: fx.GraphModule, user_inputs: tuple[int, ...] | None,
                         batch: sympy.Expr) -> fx.GraphModule:
    """A one-sample graph: no op can mix samples, but a value computed from the sample and written into a buffer or
    parameter (copy_ into an input that is not the call's tensor argument: an input running mean, InstanceNorm's
    running statistics, a parameter overwritten in forward) reaches later batches and the published model without
    noise, as buffer_write refuses at any other batch size. The sample's values are followed from the call's tensor
    arguments (user_inputs; where the capture's inputs are not known in order, every input whose dim 0 is the
    batch)."""
    placeholders = list(forward.graph.find_nodes(op="placeholder"))
    sample = {node for i, node in enumerate(placeholders)
              if (i in user_inputs if user_inputs is not None else _input_layout(node, batch) == (0, 1))}
    from_sample = set(sample)
    for node in forward.graph.nodes:
        if node.op != "call_function" or not any(a in from_sample for a in node.all_input_nodes):
            continue
        dst = node.args[0] if node.target is aten.copy_.default else None
        if dst is not None and dst.op == "placeholder" and dst not in sample and node.args[1] in from_sample:
            raise SampleMixingError(
                f"module {where(node.args[1])}: {node.target} writes a value computed from the batch into a buffer or "
                "parameter of the model in forward (a running mean of the inputs, track_running_stats=True, a "
                "parameter overwritten), so later batches and the saved model would carry this sample's values "
                "without noise. Keep such statistics out of the DP model (fixed, or computed from public data), or "
                "turn the tracking off (track_running_stats=False).")
        from_sample.add(node)
    return forward


def refuse_backward_reads_of_written_inputs(forward: fx.GraphModule) -> fx.GraphModule:
    """An input that the forward writes in place (copy_: a buffer updated in forward, such as the power iteration's
    vectors of parametrizations.spectral_norm in training mode) and also hands to the backward: the backward then
    computes from the written value where the forward read the one before. AOTAutograd's min-cut partitioner does
    this when it recomputes, in the backward, a value read from such an input instead of saving it
    (pytorch/pytorch#197039; plain torch.compile too): with spectral_norm the released gradient was 12% off the
    model's own, on both backends. Refused, naming the module: the gradient would be another function's."""
    written = {n.args[0]: n for n in forward.graph.find_nodes(op="call_function", target=aten.copy_.default)
               if isinstance(n.args[0], fx.Node) and n.args[0].op == "placeholder"}
    output = forward.graph.find_nodes(op="output")[0]
    for node in tree_leaves(output.args[0]):
        if node in written:
            raise UnsupportedOpError(
                f"module {where(written[node].args[1])}: the forward writes a buffer in place ({written[node].target}) "
                "and the backward would read it again after the write, so it would differentiate other values than "
                "the forward computed with (PyTorch's partitioner recomputes from the written buffer: "
                "pytorch/pytorch#197039), and the released gradient would be wrong. Known case: "
                "torch.nn.utils.parametrizations.spectral_norm in training mode; keep that layer in eval mode "
                "(its power iteration then does not run in forward), or leave the spectral norm out")
    return forward


def check_hand_written_backward(backward: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """The ops of a backward written by hand (an autograd.Function's backward, a torch.library op's registered
    autograd), which AOTAutograd traces into the backward graph, must keep samples apart as forward ops must:
    autograd's own backward of a per-sample forward is per sample by construction, a hand-written one is not (a
    NaN guard over the whole batch, a normalisation by the batch's gradient norm: one crafted sample then moves every
    other sample's gradient, which no clip bounds). The forward's layout rules run over the backward graph: a
    hand-written op that no rule accepts is refused; autograd's own ops, and the parameters' gradient terms the
    sites pass found (an mm contracting the batch is a weight gradient), pass the batch on where their results hold
    it by size. Runs after annotate_sites (it reads the sites)."""
    written = {n: name for n in backward.graph.nodes if n.op == "call_function" and (name := hand_written(n))}
    batch = resolved_batch(backward, ctx.batch)
    layouts = Layouts(batch)
    for node in backward.graph.find_nodes(op="placeholder"):
        if (lay := _input_layout(node, batch)) is not None:
            layouts.of[node] = lay
    if batch.free_symbols:  # the batch size as a value in a hand-written backward (g * 4**B, whose arithmetic
        for node in backward.graph.nodes:  # AOTAutograd traces with no Function tag and no aten op of origin)
            if node.op == "call_function" and (node in written or not autograd_derived(node)):  # changes a
                batch_size_uses(node, layouts)  # sample's gradient with B
    if not written:
        return backward
    for node in backward.graph.nodes:
        if node.op != "call_function" or not layouts.batched(node) or node.target in DATA_FREE:
            continue
        lay = None
        if node in written and SITE not in node.meta:
            try:
                lay = applied_rule(node, layouts)
            except (Mixing, NoRule) as exc:
                raise SampleMixingError(
                    f"the backward written by hand for {written[node]}: {node.target} "
                    f"{exc or 'has no rule that keeps samples apart'}, so one sample's values reach the others' "
                    "gradients and no clipping bound holds. Write that backward per sample (no reductions, "
                    "indexing or conditions over the batch dim), or leave the backward to autograd.") from exc.__cause__
        else:
            with contextlib.suppress(Mixing, NoRule):
                lay = applied_rule(node, layouts)
            if not (lay and isinstance(lay[0], int)):
                lay = layouts.by_size(node.meta.get("val"), batch, sympy.Integer(1))
        if lay and (isinstance(lay[0], int) or any(lay)):
            layouts.of[node] = lay
    return backward


def autograd_derived(node: fx.Node) -> bool:
    """Whether a backward-graph node comes from autograd's derivative of an aten op (its op of origin recorded) or
    is the forward recomputed; a batch-norm backward's counts hold the batch symbol in unsimplified quotients
    (B·C·L / (B·C)), which only such nodes may."""
    return node.meta.get("original_aten") is not None or node.meta.get("partitioner_tag") == "is_forward"


def hand_written(node: fx.Node) -> str | None:
    """What a backward-graph node's hand-written backward belongs to, or None for autograd's own: an autograd.Function
    (its backward's nodes carry it in their source_fn_stack, not tagged as recomputed forward) or a torch.library op
    outside aten and prims with registered autograd (its backward's nodes name the op as their forward source)."""
    stack = node.meta.get("source_fn_stack") or []
    if node.meta.get("partitioner_tag") != "is_forward" and any(entry[0] == "autograd.function" for entry in stack):
        return "an autograd.Function"
    source = (node.meta.get("fwd_source_fn_stack") or [(None, None)])[-1][-1]
    namespace = getattr(source, "namespace", None)
    if namespace is not None and namespace not in ("aten", "prims", "dpcompile"):
        return f"the custom op {source}"
    return None


POSITIONS = (prims.iota.default, aten.arange.default, aten.arange.start, aten.arange.start_step)
FACTORIES = (aten.full.default, aten.zeros.default, aten.ones.default, aten.empty.memory_format,
             aten.empty_strided.default, aten.rand.default, aten.randn.default, aten.scalar_tensor.default)
BAGS = (aten._embedding_bag.default, aten._embedding_bag_forward_only.default)  # offsets: one bag per sample
LOOKUPS = (aten.index.Tensor, aten._unsafe_index.Tensor, aten.index_select.default, aten.gather.default)
POSITION_VIEWS = (aten.slice.Tensor, aten.unsqueeze.default, aten.squeeze.dim, aten.view.default, aten.expand.default,
                  aten.alias.default, aten.clone.default, aten._unsafe_view.default, aten.reshape.default)


def refuse_batch_size_guards(example_inputs, batch: sympy.Expr) -> None:
    """A model that branches on the batch size (`if x.shape[0] > 3:` in forward) leaves no trace in its graph, only
    a guard Dynamo keeps on the batch symbol: each side of the branch compiles a graph of its own, and a sample's
    gradient then changes with how many others are in the batch. Removing one sample moves the others' clipped
    terms: the release of a batch and of that batch less one sample differed by 1.56 R (a branch adding a layer
    above 3 samples) to 4.4 R (a branch zeroing a layer below 5). Refused at capture: a guard in the batch alone,
    made by Dynamo on the model's Python (branch_of_model), that does not hold for every batch of two or more
    samples (B ≥ 5, B ≤ 3); an op's own choice of kernel by the batch size passes. Guards that exclude single
    sizes (B ≠ 1, B ≠ a layer's width: PyTorch's own checks, which compile those sizes a graph of their own), and
    graphs for one sample, pass; a user's branch on one size (`if x.shape[0] == 7`, which Dynamo answers with a
    graph for that size and B ≠ 7 for the others) cannot be told from those (README, Limitations)."""
    from torch._guards import detect_fake_mode
    env = getattr(detect_fake_mode(example_inputs), "shape_env", None)
    if env is None or not isinstance(batch, sympy.Symbol):
        return
    if batch_of_one_in(env, batch):
        return  # a graph for one sample
    for guard in env.guards:
        if guard.expr.free_symbols != {batch} or isinstance(guard.expr, sympy.Ne) or not branch_of_model(guard):
            continue
        if linear_guard_truth(guard.expr, batch, 2, 2**40) == (True, True):  # every batch of two or more: B ≥ 2
            continue
        raise SampleMixingError(
            f"the model's code depends on the batch size: Dynamo guards the batch size by {guard.expr} "
            f"({_guard_location(guard)}), so each side of that branch compiles a graph of its own and a sample's "
            "gradient changes with how many others are in the batch, which no clipping bound covers. Make the "
            "forward the same for every batch size (no branches on x.shape[0] or len(x)).")


def branch_of_model(guard) -> bool:
    """Whether Dynamo made a shape guard evaluating the model's own Python on a size (an `if` or a comparison:
    torch/_dynamo's evaluate_expr), not an op's implementation choosing a kernel by the batch size (the CPU
    convolution's fake function guards B ≥ 16 for oneDNN, the same function of each sample on either side)."""
    where = getattr(getattr(guard, "sloc", None), "framework_loc", None)
    filename = where if isinstance(where, str) else getattr(where, "filename", "") or ""
    return "torch/_dynamo/" in filename.replace("\\", "/")


def _guard_location(guard) -> str:
    """Where a shape guard was made, as torch records it (the user's line where it knows one)."""
    loc = getattr(guard, "sloc", None)
    return f"at {loc}" if loc is not None else "where Dynamo traced it"


def batch_size_uses(node: fx.Node, L: Layouts) -> None:
    """The batch size as a number (x.shape[0], a symbolic size holding the batch) may shape tensors but not enter
    their values: a sample's contribution would change with the number of other samples (a mean over the batch
    inside the model, a scale by the batch size) or with its position among them (an arange over the batch), which
    the numerical check, at one batch size and order, cannot see. Raises SampleMixingError for such a use; a factory
    whose shape holds the batch (zeros(B, d), full((B, 1), v)) gets the batch's layout, so a later scan or reduction
    over it (ones(B).cumsum(0): positions again) is refused as any batched value's would be.

    Positions (an arange over the batch, L.positions) are followed until they meet the batch. Computed on (a parity,
    a shift, an arithmetic with data) they are refused there; the arange itself as the batch index of a lookup (the
    diagonal gathers Hugging Face's masks are built with: row i of the result is row i of the source) is left to
    the lookup's rule, as are an embedding bag's offsets."""
    leaves = [x for x in tree_leaves((node.args, node.kwargs)) if isinstance(x, fx.Node)]
    sizes = [x for x in leaves if _holds_batch_size(x, L.batch)]
    if node.target in POSITIONS and sizes:
        L.positions[node] = False
        if _is_arange_of_batch(node, L.batch):
            L.identity.add(node)
        return
    reached = [x for x in leaves if x in L.positions]
    if reached and node.target not in BAGS:
        computed = any(L.positions[x] for x in reached)
        if node.target in LOOKUPS and not computed and node.args[0] not in reached:
            return  # the arange as a lookup's index: the result is the source's rows in order, as the rule says
        if not L.batched(node):
            L.positions[node] = computed or node.target not in POSITION_VIEWS
            if not L.positions[node] and all(x in L.identity for x in reached):
                L.identity.add(node)
            return
        raise _refusal(node, Mixing("computes with each sample's position in the batch (an arange over the batch "
                                    "size), which changes as other samples join"))
    if not sizes:
        return
    as_value = node.target is aten.scalar_tensor.default or node.target is aten.full.default and node.args[1] in sizes
    if node.target in FACTORIES and not as_value:  # the batch size as a shape
        if (lay := L.by_size(node.meta.get("val"), L.batch, sympy.Integer(1), 0)) is not None:
            L.of[node] = lay
        return
    if node.target in FACTORIES or torch.Tag.pointwise in getattr(node.target, "tags", ()) or node.target in SAME:
        raise _refusal(node, Mixing("uses the batch size (x.shape[0]) as a value, so each sample's contribution "
                                    "depends on how many others are in the batch. Leave the mean over the batch to "
                                    "the loss outside the model (loss_reduction='mean', with expected_batch_size for "
                                    "a fixed normaliser)"))


def _is_arange_of_batch(node: fx.Node, batch: sympy.Expr) -> bool:
    """Whether an iota/arange node is 0, 1, …, B − 1."""
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or not same(shape_of_value(value)[0], batch):
        return False
    if node.target is prims.iota.default:
        return node.kwargs.get("start", 0) == 0 and node.kwargs.get("step", 1) == 1
    start = node.args[0] if node.target is not aten.arange.default and len(node.args) > 1 else 0
    step = node.args[2] if node.target is aten.arange.start_step and len(node.args) > 2 else 1
    return start == 0 and step == 1


def _holds_batch_size(x: fx.Node, batch: sympy.Expr) -> bool:
    """Whether a graph value is a symbolic number whose expression holds the batch size."""
    value = x.meta.get("val")
    if not isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return False
    return bool(value.node.expr.free_symbols & batch.free_symbols)


def views_in_order(node: fx.Node, lay, batch: sympy.Expr, views: int) -> None:
    """Every dim of size K·B in node's tensor outputs is its batch dim with layout (dim, K): sample b's views
    in rows b·K … b·K+K−1, as the rules read them; else UnsupportedOpError."""
    val = node.meta.get("val")
    values, lays = (val, lay) if isinstance(val, (tuple, list)) else ((val,), (lay,))
    per_output = isinstance(lays, tuple) and len(lays) == len(values) and not isinstance(lays[0], int)
    lays = lays if per_output else (None,) * len(values)
    for value, out in zip(values, lays):
        if not isinstance(value, torch.Tensor):
            continue
        for d, size in enumerate(shape_of_value(value)):
            if same(size, views * batch) and (out is None or out[0] != d or not same(out[1], views)):
                raise UnsupportedOpError(
                    f"module {where(node)}: {node.target} puts the {views} augmented views of each sample "
                    f"(augmentation_multiplicity={views}) in a dim of size {views}·B in another order than sample "
                    f"by sample (rows b·{views} … b·{views}+{views - 1} for sample b), so a sample's views could "
                    "not be clipped together as one sample. Keep each sample's views consecutive: reshape "
                    "(B·K, ...) to (B, K, ...) and back, and do not move the views dim in front of the batch dim "
                    "or tile the batch (x.repeat(K, ...)).")


def _merged_batch(node: fx.Node, L: Layouts, views: int = 1) -> str:
    """Where node's batched operand got the batch merged with other values in one dim (k ≠ 1), if a
    reshape in another module did it (nn.Flatten(0), x.view(-1)): named, since that is the mistake. A
    sample's K views merged into K·B rows (augmentation multiplicity) are the call's own layout, not it."""
    views_rows = lambda x: views > 1 and same(L.get(x)[1], views) and \
        same(_shape(x)[L.get(x)[0]], views * L.batch)  # noqa: E731
    seen, todo = set(), [x for x in L.batched(node) if (lay := L.get(x)) is not None and lay[1] != 1
                         and not views_rows(x)]
    while todo:
        x = todo.pop()
        if x in seen or x.op != "call_function":
            continue
        seen.add(x)
        sources = [y for y in L.batched(x) if L.get(y) is not None]
        if RULES.get(x.target) in (view, as_strided) and sources and L.get(sources[0])[1] == 1:
            if where(x) == where(node):
                return ""
            return (f" The batch shares its dim with other values since module {where(x)} reshaped "
                    f"{list(_shape(sources[0]))} to {list(_shape(x))} (as nn.Flatten(0) or x.view(-1) do): keep "
                    "the batch as its own dim 0 (nn.Flatten() and x.flatten(1) start at dim 1).")
        todo.extend(y for y in sources if L.get(y)[1] != 1 and not views_rows(y))
    return ""


# Module classes refused before capture, with what to do instead.
REFUSED_MODULES = {
    torch.nn.RNNBase: "recurrent layers (nn.RNN, nn.LSTM, nn.GRU), trainable or frozen, do not capture as one "
                      "graph; write the recurrence with nn.Linear cells in a Python loop over time (that is "
                      "supported), or use a convolutional or attention model",
}


def refuse_unsupported_modules(model: torch.nn.Module) -> None:
    """Raise UnsupportedOpError naming the first submodule of a refused class or with a refused option or hook."""
    from torch.nn.utils.weight_norm import WeightNorm

    from dpcompile.errors import UnsupportedOpError
    for path, module in model.named_modules():
        embedding = isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag))
        if embedding and module.max_norm is not None:  # trainable or frozen: the weight itself changes
            raise UnsupportedOpError(
                f"module '{path or '<model>'}' ({type(module).__name__}): max_norm renormalises, in place, the rows "
                "the batch looks up, so the weight after a step shows which indices the batch held, without noise; "
                "set max_norm=None (to bound the looked-up vectors, scale the output out of place, e.g. "
                "v * (max_norm / v.norm(dim=-1, keepdim=True)).clamp(max=1)).")
        if embedding and module.weight.requires_grad and (module.scale_grad_by_freq or module.sparse):
            raise UnsupportedOpError(
                f"module '{path or '<model>'}' ({type(module).__name__}): scale_grad_by_freq counts indices over "
                "the whole batch (it mixes samples) and sparse gradients are not clipped per sample; set "
                "scale_grad_by_freq=False and sparse=False.")
        hooks = [h for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm)]
        if any(getattr(module, f"{h.name}_{part}").requires_grad for h in hooks for part in "gv"):
            raise UnsupportedOpError(
                f"module '{path or '<model>'}' ({type(module).__name__}): the deprecated nn.utils.weight_norm hook "
                "recomputes the weight outside the graph's per-sample rules; use "
                "torch.nn.utils.parametrizations.weight_norm (supported) instead.")
        for cls, advice in REFUSED_MODULES.items():
            if isinstance(module, cls):
                raise UnsupportedOpError(f"module '{path or '<model>'}' ({type(module).__name__}): {advice}.")


# ------------------------------------------------------------------------------------------------
# The numerical check: the captured graph run twice, sample 0 changed
# ------------------------------------------------------------------------------------------------

class SampleCheck:
    """On the first call with samples, run the Dynamo graph eagerly twice (same random state,
    inputs cloned) with only sample 0 of the user's inputs changed (at the first call of two or
    more samples), and refuse it at the first node where another sample's value moved. With K views per
    sample, sample 0 is all its K views, and a dim of size K·B holds it in its first K rows."""

    def __init__(self, gm: fx.GraphModule, batch: sympy.Expr, user_inputs: tuple[int, ...], views: int = 1):
        self.gm, self.batch, self.user_inputs, self.views, self.done = gm, batch, user_inputs, views, False
        self.placeholders = list(gm.graph.find_nodes(op="placeholder"))

    def before(self, compiled: Callable) -> Callable:
        """compiled, checking its first call's inputs first."""
        boxed = getattr(compiled, "_boxed_call", False)

        def run(*args):
            if not self.done:
                self.check(list(args[0]) if len(args) == 1 and isinstance(args[0], list) else list(args))
            return compiled(*args)
        run._boxed_call = boxed
        return run

    def _batch_dims(self, node: fx.Node, value=None) -> list[tuple[int, int]]:
        """(dim, k) for the dims of a node's value (or of one of its outputs) whose size is the batch (k = 1)
        or K·B (k = K views per sample, K > 1)."""
        value = node.meta.get("example_value") if value is None else value
        if not isinstance(value, torch.Tensor):
            return []
        return [(d, k) for d, s in enumerate(shape_of_value(value))
                for k in {1, self.views} if same(s, k * self.batch)]

    def _node_moved(self, node: fx.Node, values: list) -> bool:
        example = node.meta.get("example_value")
        if isinstance(example, (tuple, list)) and all(isinstance(v, (tuple, list)) for v in values):
            return any(_moved([a, b], self._batch_dims(node, e)) for e, a, b in zip(example, *values))
        return _moved(values, self._batch_dims(node))

    def check(self, args: list) -> None:
        """Raise SampleMixingError naming the first node whose other samples moved."""
        sizes = [a.shape[d] for n, a in zip(self.placeholders, args) if isinstance(a, torch.Tensor)
                 for d, k in self._batch_dims(n) if k == 1]
        size = sizes[0] if sizes else (int(self.batch) if not self.batch.free_symbols else 0)
        if size <= 1:  # one sample cannot mix: a graph for one sample is done, a graph for any batch size is
            # checked at its first larger batch. (Not on a doubled sample: code for one sample may index past it,
            # which on CUDA is a device-side assert that ends the process's CUDA context.)
            self.done = size == 1 and not self.batch.free_symbols
            return
        runs = (self._inputs(args, change=False), self._inputs(args, change=True))
        try:
            moved = self._first_moved(runs)
        except DPCompileError:
            raise
        except _AsGiven as failed:
            exc = failed.__cause__
            if "register a hook" in str(exc):  # Tensor.register_hook inside forward (run here without grad)
                raise UnsupportedOpError(
                    "the model registers a gradient hook on a tensor inside forward (Tensor.register_hook): it "
                    "changes the backward outside what autograd derives from the forward, which dpcompile cannot "
                    "check to be per sample or clip. Remove the hook, or write the change as a custom "
                    "torch.autograd.Function (whose backward dpcompile checks)") from exc
            raise DPCompileError(
                f"the model fails on this batch as it is ({type(exc).__name__}: {exc}), before anything private "
                "happens: the same call without dpcompile fails too. Fix the model or its inputs (dtypes, devices, "
                "shapes)") from exc
        except Exception as exc:
            raise DPCompileError(
                f"the sample-independence check could not run the captured graph on a batch with sample 0 changed "
                f"({type(exc).__name__}: {exc}); make the model run on any values of its inputs") from exc
        self.done = True
        if moved is not None and moved.target is CUSTOM_FUNCTION:
            raise SampleMixingError(
                f"module {where(moved)}: a custom torch.autograd.Function's backward changed another sample's input "
                "gradient when only sample 0's values and output gradient changed (its backward run twice), so it "
                "mixes samples: per-sample gradients do not exist and no clipping bound would hold. Make its backward "
                "per sample (no sums, means or indexing across the batch), or write the op with torch operations and "
                "let autograd derive its backward.")
        if moved is not None:
            raise SampleMixingError(
                f"module {where(moved)}: {_op_name(moved)} changed another sample's values when only sample 0's "
                "input changed (the captured graph run twice), so it mixes samples: per-sample gradients do not "
                "exist and no clipping bound would hold. Make the computation per sample (no reductions, sorting, "
                "indexing or reshaping across the batch).")

    def _inputs(self, args: list, change: bool) -> list:
        """Parameters detached, other tensors cloned (in-place ops stay here); sample 0 changed."""
        out = []
        for i, (node, a) in enumerate(zip(self.placeholders, args)):
            if isinstance(a, torch.nn.Parameter):
                a = a.detach()
            elif isinstance(a, torch.Tensor):
                a = a.detach().clone()
                if change and i in self.user_inputs and (0, 1) in self._batch_dims(node):
                    a[0] = _other_sample(a)
            out.append(a)
        return out

    def _first_moved(self, runs) -> fx.Node | None:
        """Both runs node by node (each with its own random state); the first node that moved."""
        interpreters = [fx.Interpreter(self.gm) for _ in runs]
        with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(runs[0])):
            torch.manual_seed(0)
            states = [_rng_state() for _ in runs]
            last_use = {}
            for node in self.gm.graph.nodes:
                for x in node.all_input_nodes:
                    last_use[x] = node
            for node in self.gm.graph.nodes:
                if node.op == "output":
                    return None
                values = [None] * len(runs)
                runs_in_order = list(enumerate(zip(interpreters, runs)))
                if node.target in CONTEXT_EXITS:  # the runs' contexts entered in turn, left last-in first-out
                    runs_in_order.reverse()
                for r, (interp, inputs) in runs_in_order:
                    if node.op == "placeholder":
                        interp.env[node] = inputs[self.placeholders.index(node)]
                    else:
                        _set_rng_state(states[r])
                        try:
                            interp.env[node] = interp.run_node(node)
                        except Exception as exc:
                            if r == 0:  # the user's own inputs, unchanged: the model's error, not the check's
                                raise _AsGiven() from exc
                            raise
                        states[r] = _rng_state()
                    values[r] = interp.env[node]
                if node.op != "placeholder" and (self._node_moved(node, values)
                                                 or self._backward_moved(node, [i.env for i in interpreters])):
                    return node
                for x in node.all_input_nodes:
                    if last_use.get(x) is node:
                        for interp in interpreters:
                            interp.env.pop(x, None)
        return None


    def _backward_moved(self, node: fx.Node, envs: list[dict]) -> bool:
        """For a custom autograd.Function (Dynamo's autograd_function_apply: its forward and backward bodies), whose
        backward the user wrote and autograd does not derive from the forward: its backward run on each run's saved
        values with output gradients that differ only in sample 0; whether another sample's input gradient moved.
        (A backward that sums output gradients over the batch passes every forward check and mixes samples.)"""
        if node.target is not CUSTOM_FUNCTION:
            return False
        fwd_body, bwd_body = (envs[0][a] for a in node.args[:2])
        examples = node.meta.get("example_value")
        examples = examples if isinstance(examples, (tuple, list)) else (examples,)
        inputs = []
        for r, env in enumerate(envs):
            args = [env[a] if isinstance(a, fx.Node) else a for a in node.args[2:]]
            outs, saved = fwd_body(*args)
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            grads = []
            for i, (out, example) in enumerate(zip(outs, examples)):
                g = torch.Generator(device=out.device).manual_seed(i) \
                    if isinstance(out, torch.Tensor) and out.is_floating_point() else None  # an integer output's
                # gradient (mark_non_differentiable: argmax, indices) is not drawn: it is passed as it is
                grad = torch.randn(out.shape, dtype=out.dtype, device=out.device, generator=g) if g is not None else out
                if r == 1 and g is not None:
                    for d, k in self._batch_dims(node, example):
                        grad.narrow(d, 0, k).copy_(torch.randn(grad.narrow(d, 0, k).shape, dtype=out.dtype,
                                                               device=out.device, generator=g))
                grads.append(grad)
            inputs.append(bwd_body(*grads, *saved))
        return any(_moved([a, b], self._batch_dims(arg)) for arg, a, b in zip(node.args[2:], *inputs)
                   if isinstance(arg, fx.Node))


# Dynamo's node for a custom torch.autograd.Function (its forward and backward bodies), where this torch has it.
CUSTOM_FUNCTION = getattr(torch.ops.higher_order, "autograd_function_apply", None)
# Graph nodes that leave a context a matching node entered (autocast inside forward). The two runs go node by
# node, so run 0 enters, then run 1; leaving in the same order would restore run 0's saved state last, and autocast
# stayed on after the check: the model's forward then ran under it (bf16 outputs, a backward that failed on them).
# The contexts a graph enters and leaves by a pair of ops (the runs' guards are left last-in first-out: inference mode
# left in the wrong order raised "Inference tensors cannot be saved for backward" and stayed on for the process).
CONTEXT_EXITS = {f for f in (getattr(torch.amp.autocast_mode, "_exit_autocast", None),
                             getattr(torch.autograd.grad_mode, "_exit_inference_mode", None)) if f is not None}


class _AsGiven(Exception):
    """The captured graph failed on the call's own inputs (its __cause__ says why)."""


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_module":
        return str(node.target)
    module = getattr(node.target, "__module__", "") or ""
    name = getattr(node.target, "__name__", str(node.target))
    return f"torch.{name}" if module.startswith("torch") and not module.startswith("torch.nn") else \
        f"{module}.{name}" if module else name


def _cuda_devices(inputs: list) -> list[int]:
    return sorted({a.device.index or 0 for a in inputs if isinstance(a, torch.Tensor) and a.is_cuda})


def _rng_state():
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)


def _set_rng_state(state) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def _other_sample(a: torch.Tensor) -> torch.Tensor:
    """New values for sample 0: floats finite random values at the data's scale; integers and
    booleans sample 0's values rolled, or sample 1's where that differs (valid indices stay valid)."""
    if a.is_floating_point() or a.is_complex():
        finite = a[torch.isfinite(a)] if not a.is_complex() else a[torch.isfinite(a)].abs()
        scale = (finite.double().std().nan_to_num(0).item() if finite.numel() > 1 else 0.0) + 1.0
        return torch.randn(a[0].shape, dtype=a.dtype, device=a.device, generator=_generator(a.device)) * scale
    if a.shape[0] > 1 and not torch.equal(a[0], a[1]):
        return a[1]
    return a[0].flatten().roll(1).reshape(a[0].shape)


def _generator(device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(1234)
    return g


def _moved(values: list, dims: list[tuple[int, int]]) -> bool:
    """Whether the second run's value differs from the first's outside sample 0 (its first k rows along every
    batch dim (dim, k))."""
    a, b = values
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or not dims or a.shape != b.shape:
        return False
    for d, k in dims:
        if d >= a.dim() or a.shape[d] < 2 * k:
            return False
        a, b = a.narrow(d, k, a.shape[d] - k), b.narrow(d, k, b.shape[d] - k)
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    if not a.is_floating_point():
        return not torch.equal(a, b)
    a, b = a.double(), b.double()
    finite = torch.isfinite(a)
    scale = a[finite].abs().max().item() if finite.any() else 0.0
    rtol = 1e-5 if values[0].dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128) else 2e-2
    same = (a == b) | (a.isnan() & b.isnan()) | ((a - b).abs() <= rtol * (b.abs() + 0.1 * scale))
    return not bool(same.all())


# A backward graph's meta key: run it as it is, without inductor (a one-sample graph inductor would misread).
EAGER_ONLY = "lower_without_inductor"


def refuse_batch_broadcasts(backward: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """The captured backward, refused where an elementwise op broadcasts a symbolic size against a different size
    other than one, which no valid broadcast does unless the symbol is fixed to that size by a guard: a graph
    recaptured at a batch of one can decompose a product over the batch into such a broadcast with the batch left
    symbolic, and inductor's CPU kernel then indexed the batch-sized operand as if it had the other size (read past
    its end: a per-sample gradient of uninitialised values, which a norm could under-count). This keeps it a
    refusal, not a wrong norm (benchmarks/NOTES.md, thirty-third session); a graph whose batch is guarded to one
    (InstanceNorm's at a batch of one) is marked EAGER_ONLY instead: the backend runs it without inductor."""
    for node in backward.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload) \
                or torch.Tag.pointwise not in node.target.tags:
            continue
        shapes = [shape_of_value(a.meta["val"]) for a in node.args
                  if isinstance(a, fx.Node) and isinstance(a.meta.get("val"), torch.Tensor)]
        if len(shapes) < 2:
            continue
        rank = max(len(s) for s in shapes)
        for sizes in zip(*[(sympy.Integer(1),) * (rank - len(s)) + tuple(s) for s in shapes]):
            sizes = [s for s in sizes if s != 1]
            if any(s.free_symbols for s in sizes) and not all(same(sizes[0], s) for s in sizes[1:]):
                if ctx is not None and guards_batch_of_one(node, resolved_batch(backward, ctx.batch)):
                    # a graph for one sample (InstanceNorm's at a batch of one): the broadcast is valid at the one
                    # size it runs at, and runs as it is; only inductor's kernel misreads it
                    backward.meta[EAGER_ONLY] = f"{node.target} broadcasts {[tuple(s) for s in shapes]}"
                    continue
                raise DPCompileError(
                    f"the captured backward's {node.target} ('{node.name}') broadcasts a symbolic size against another "
                    f"(operand shapes {[tuple(s) for s in shapes]}): PyTorch recaptured the model for one size (often a "
                    "batch of one) and left the batch symbolic, and such a graph has been compiled to read past a "
                    "tensor's end. dpcompile refuses it rather than risk a wrong per-sample norm. Avoid that batch "
                    "size (e.g. drop_last=True in the DataLoader) and please report the model.")
    return backward
