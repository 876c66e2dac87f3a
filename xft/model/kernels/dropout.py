"""LoRA adapter dropout whose mask is a pure function of (seed, salt, row, column).

peft draws each adapter's dropout mask from torch's generator and autograd keeps the dropped
input (tokens x features per adapter) for backward. Here the mask is recomputed wherever it
is needed, from three things:

- the step's seed, a one-element int64 tensor on the device (`DropoutSeed.tensor`) that the
  kernels read when they run; `DropoutSeed.advance` writes a new value in place once per
  forward of the whole model (micro-batch), outside any recorded CUDA graph, so a graph
  replayed later reads the new seed, and the recomputation in backward (eager
  checkpointer or graph) reads the same seed as the forward did;
- the adapter's salt, a small integer fixed per LoRA layer (`DropoutSeed.salt`), so every
  adapter has its own mask;
- the element's row (token) and column (feature) in the (tokens, features) input.

Nothing of size tokens x features is kept for backward, and replaying a layer reproduces its
masks exactly. The seed is drawn from torch's default CPU generator, so it follows the run's
seed, and an exact resume (which restores that generator) draws the same masks again.

The mask: columns go in pairs; pair `j = col // 2` of a row gets `h = mix(j + k_row)` with
`k_row = mix(row ^ k)`, `k = mix(seed_lo ^ mix(seed_hi ^ mix(salt)))` and `mix` a 32-bit
integer hash (two multiply-xorshift rounds, constants below 2**31 so the torch reference
computes it exactly in int64); the even column is kept when the low 16 bits of `h` are at
least `round(p * 2**16)`, the odd column when the high 16 bits are (p = 0.1 becomes
0.100006). One hash per two elements keeps the kernel about as cheap as the memory traffic
it rides on (a hash per element cost more integer work than the load and store of it). The
same integer arithmetic runs in the Triton kernel (CUDA) and in the torch reference
(anywhere), so the two give bit-identical masks; the Triton path checks that once per
process on probes and falls back to the reference (logged) if it ever differs.
"""
import logging
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from .backend import tl, triton, use_triton

logger = logging.getLogger(__name__)

_M32 = 0xFFFFFFFF
_MIX_1, _MIX_2 = 0x21F0AAAD, 0x735A2D97  # both < 2**31: x * c < 2**63 for any 32-bit x
_SALT_LIMIT = 2**31
_KEEP_BITS = 16  # two per 32-bit hash


def keep_threshold(p: float) -> int:
    """The 16-bit threshold below which an element is dropped.

    >>> keep_threshold(0.0), keep_threshold(0.1), keep_threshold(1.0)
    (0, 6554, 65536)
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f'dropout probability must be in [0, 1], got {p}')
    return int(round(p * 2**_KEEP_BITS))


# ------------------------------------------------------------------------------------------
# the torch reference (int64 arithmetic, exact)
# ------------------------------------------------------------------------------------------
def _mix(x: torch.Tensor) -> torch.Tensor:
    """The 32-bit hash on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MIX_1) & _M32
    x = x ^ (x >> 15)
    x = (x * _MIX_2) & _M32
    return x ^ (x >> 15)


def _mix_int(x: int) -> int:
    """`_mix` of one Python int (the same arithmetic)."""
    x ^= x >> 16
    x = (x * _MIX_1) & _M32
    x ^= x >> 15
    x = (x * _MIX_2) & _M32
    return x ^ (x >> 15)


def _call_key(seed: torch.Tensor, salt: int) -> torch.Tensor:
    """The per-call key `k` as a 0-dim int64 tensor on the seed's device. The salt is mixed
    on the host: no host-to-device copy, so the reference path can be recorded in a graph."""
    s = seed.reshape(()).to(torch.int64)
    lo, hi = s & _M32, (s >> 32) & _M32
    return _mix(lo ^ _mix(hi ^ _mix_int(salt)))


def keep_mask(rows: int, cols: int, seed: torch.Tensor, salt: int, p: float,
              row_offset: int = 0) -> torch.Tensor:
    """The (rows, cols) boolean keep mask of one adapter call, on the seed's device; its
    first row is row `row_offset` of the whole input.

    >>> seed = torch.tensor([12345])
    >>> mask = keep_mask(64, 512, seed, salt=3, p=0.25)
    >>> mask.shape, abs(mask.float().mean().item() - 0.75) < 0.02
    (torch.Size([64, 512]), True)
    >>> torch.equal(mask, keep_mask(64, 512, seed, 3, 0.25)), torch.equal(mask, keep_mask(64, 512, seed, 4, 0.25))
    (True, False)
    """
    if seed.device.type == 'cpu':
        return torch.from_numpy(_keep_mask_numpy(rows, cols, int(seed.reshape(())), salt, p, row_offset))
    return _keep_mask_torch(rows, cols, seed, salt, p, row_offset)


def _keep_mask_torch(rows: int, cols: int, seed: torch.Tensor, salt: int, p: float,
                     row_offset: int = 0) -> torch.Tensor:
    """`keep_mask` in int64 torch ops on the seed's device (no host sync: graph-safe)."""
    device = seed.device
    key = _call_key(seed, salt)
    row = torch.arange(row_offset, row_offset + rows, dtype=torch.int64, device=device)
    row_key = _mix(row ^ key)[:, None]
    pair = torch.arange((cols + 1) // 2, dtype=torch.int64, device=device)[None, :]
    h = _mix((pair + row_key) & _M32)
    bits = torch.stack([h & 0xFFFF, h >> 16], dim=-1).reshape(rows, -1)[:, :cols]
    return bits >= keep_threshold(p)


def _mix_u32(x: np.ndarray) -> np.ndarray:
    """`_mix` on numpy uint32 arrays, in place (uint32 arithmetic wraps modulo 2**32)."""
    x ^= x >> np.uint32(16)
    x *= np.uint32(_MIX_1)
    x ^= x >> np.uint32(15)
    x *= np.uint32(_MIX_2)
    x ^= x >> np.uint32(15)
    return x


def _keep_mask_numpy(rows: int, cols: int, seed: int, salt: int, p: float,
                     row_offset: int = 0) -> np.ndarray:
    """`keep_mask` on the CPU: the same bits in numpy uint32, a few times faster than int64
    torch (half the bytes, no masking after each multiply)."""
    key = _mix_int((seed & _M32) ^ _mix_int(((seed >> 32) & _M32) ^ _mix_int(salt)))
    row = np.arange(row_offset, row_offset + rows, dtype=np.uint32)
    row_key = _mix_u32(row ^ np.uint32(key))[:, None]
    h = np.arange((cols + 1) // 2, dtype=np.uint32)[None, :] + row_key  # wraps, as in the kernel
    _mix_u32(h)
    threshold = keep_threshold(p)
    keep = np.empty((rows, 2 * h.shape[1]), dtype=bool)
    np.greater_equal(h & np.uint32(0xFFFF), threshold, out=keep[:, 0::2])
    np.greater_equal(h >> np.uint32(16), threshold, out=keep[:, 1::2])
    return keep[:, :cols]


def dropped_reference(x: torch.Tensor, seed: torch.Tensor, salt: int, p: float,
                      scale: float = 1.0, out: Optional[torch.Tensor] = None,
                      accumulate: bool = False, row_offset: int = 0) -> torch.Tensor:
    """`dropped` in plain torch (any device)."""
    mask = keep_mask(x.shape[0], x.shape[1], seed, salt, p, row_offset)
    factor = scale / (1.0 - p)
    # fp32 at least, as the kernel computes (float64 stays float64)
    value = x.to(torch.promote_types(x.dtype, torch.float32)) * mask * factor
    value = value.to(x.dtype if out is None else out.dtype)
    if out is None:
        return value
    if accumulate:
        return out.add_(value)
    return out.copy_(value)


def dropped_pair_reference(x: torch.Tensor, t: torch.Tensor, seed: torch.Tensor, salt: int, p: float,
                           scale: float = 1.0, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`dropped_pair` in plain torch (any device)."""
    mask = keep_mask(x.shape[0], x.shape[1], seed, salt, p)
    compute = torch.promote_types(x.dtype, torch.float32)
    x_dropped = (x.to(compute) * mask * (1.0 / (1.0 - p))).to(x.dtype)
    t_dropped = (t.to(compute) * mask * (scale / (1.0 - p))).to(t.dtype if out is None else out.dtype)
    if out is None:
        t.copy_(t_dropped)
    else:
        out.add_(t_dropped)
    return x_dropped


# ------------------------------------------------------------------------------------------
# the Triton kernel (CUDA)
# ------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _mix32(x):
        x = x ^ (x >> 16)
        x = x * 0x21F0AAAD
        x = x ^ (x >> 15)
        x = x * 0x735A2D97
        return x ^ (x >> 15)

    # An int argument equal to 1 would be compiled in as a constant (Triton's specialization),
    # which has no `.to`; salts and offsets of 1 are common, so they stay runtime values.
    @triton.jit(do_not_specialize=['salt', 'threshold', 'row_offset'])
    def _dropout_kernel(X, OUT, SEED, salt, threshold, factor, n_cols, stride_x, stride_out,
                        row_offset, ACCUMULATE: tl.constexpr, PAIRS: tl.constexpr):
        # One program: 2 * PAIRS columns of one row, as a (PAIRS, 2) tile whose two columns
        # take the low and high 16 bits of one hash. Rows go on grid axis 0 (limit 2^31 - 1).
        row = tl.program_id(0)
        pairs = tl.program_id(1) * PAIRS + tl.arange(0, PAIRS)
        half = tl.arange(0, 2)
        seed = tl.load(SEED)
        lo = seed.to(tl.uint32)  # truncation keeps the low 32 bits
        hi = (seed >> 32).to(tl.uint32)  # the seed is below 2**62: no sign bits
        key = _mix32(lo ^ _mix32(hi ^ _mix32(salt.to(tl.uint32))))
        row_key = _mix32((row + row_offset).to(tl.uint32) ^ key)
        h = _mix32(pairs.to(tl.uint32) + row_key)
        bits = tl.where(half[None, :] == 0, (h & 0xFFFF)[:, None], (h >> 16)[:, None])
        keep = bits.to(tl.int32) >= threshold
        cols = pairs[:, None] * 2 + half[None, :]
        in_row = cols < n_cols
        row64 = row.to(tl.int64)
        x = tl.load(X + row64 * stride_x + cols, mask=in_row, other=0.0).to(tl.float32)
        value = tl.where(keep, x * tl.cast(factor, tl.float32), 0.0)
        out_ptr = OUT + row64 * stride_out + cols
        if ACCUMULATE:
            value += tl.load(out_ptr, mask=in_row, other=0.0).to(tl.float32)
        tl.store(out_ptr, value.to(OUT.dtype.element_ty), mask=in_row)


    @triton.jit(do_not_specialize=['salt', 'threshold'])
    def _dropout_pair_kernel(X, T, XD, OUT, SEED, salt, threshold, factor_x, factor_t, n_cols,
                             stride_x, stride_t, stride_xd, stride_out, ACCUMULATE: tl.constexpr,
                             PAIRS: tl.constexpr):
        # Backward of one adapter: the dropped input (for A's grad) and the dropped input-grad
        # term, from one hash per two elements. The same tiling as _dropout_kernel.
        row = tl.program_id(0)
        pairs = tl.program_id(1) * PAIRS + tl.arange(0, PAIRS)
        half = tl.arange(0, 2)
        seed = tl.load(SEED)
        lo = seed.to(tl.uint32)
        hi = (seed >> 32).to(tl.uint32)
        key = _mix32(lo ^ _mix32(hi ^ _mix32(salt.to(tl.uint32))))
        row_key = _mix32(row.to(tl.uint32) ^ key)
        h = _mix32(pairs.to(tl.uint32) + row_key)
        bits = tl.where(half[None, :] == 0, (h & 0xFFFF)[:, None], (h >> 16)[:, None])
        keep = bits.to(tl.int32) >= threshold
        cols = pairs[:, None] * 2 + half[None, :]
        in_row = cols < n_cols
        row64 = row.to(tl.int64)
        x = tl.load(X + row64 * stride_x + cols, mask=in_row, other=0.0).to(tl.float32)
        x_dropped = tl.where(keep, x * tl.cast(factor_x, tl.float32), 0.0)
        tl.store(XD + row64 * stride_xd + cols, x_dropped.to(XD.dtype.element_ty), mask=in_row)
        t = tl.load(T + row64 * stride_t + cols, mask=in_row, other=0.0).to(tl.float32)
        value = tl.where(keep, t * tl.cast(factor_t, tl.float32), 0.0)
        out_ptr = OUT + row64 * stride_out + cols
        if ACCUMULATE:
            value += tl.load(out_ptr, mask=in_row, other=0.0).to(tl.float32)
        tl.store(out_ptr, value.to(OUT.dtype.element_ty), mask=in_row)


def _pairs_per_program(cols: int) -> int:
    n_pairs = (cols + 1) // 2
    return 1024 if n_pairs >= 1024 else max(16, triton.next_power_of_2(n_pairs))


def dropped_pair_triton(x: torch.Tensor, t: torch.Tensor, seed: torch.Tensor, salt: int, p: float,
                        scale: float = 1.0, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`dropped_pair` as one Triton kernel (rows with unit column stride)."""
    x_dropped = torch.empty_like(x)
    target = t if out is None else out
    pairs = _pairs_per_program(x.shape[1])
    grid = (x.shape[0], triton.cdiv((x.shape[1] + 1) // 2, pairs))
    _dropout_pair_kernel[grid](x, t, x_dropped, target, seed, salt, keep_threshold(p), 1.0 / (1.0 - p),
                               scale / (1.0 - p), x.shape[1], x.stride(0), t.stride(0),
                               x_dropped.stride(0), target.stride(0), ACCUMULATE=out is not None,
                               PAIRS=pairs, num_warps=4)
    return x_dropped


def dropped_triton(x: torch.Tensor, seed: torch.Tensor, salt: int, p: float, scale: float = 1.0,
                   out: Optional[torch.Tensor] = None, accumulate: bool = False,
                   row_offset: int = 0) -> torch.Tensor:
    """`dropped` as one Triton kernel (rows with unit column stride)."""
    if out is None:
        out = torch.empty_like(x)
    pairs = _pairs_per_program(x.shape[1])
    grid = (x.shape[0], triton.cdiv((x.shape[1] + 1) // 2, pairs))
    _dropout_kernel[grid](x, out, seed, salt, keep_threshold(p), scale / (1.0 - p), x.shape[1],
                          x.stride(0), out.stride(0), row_offset, ACCUMULATE=accumulate, PAIRS=pairs,
                          num_warps=4)
    return out


class _TritonCheck:
    """Whether the Triton kernel gives the reference's bits, checked once per process on
    probes of odd shapes (and after any error, never again)."""

    def __init__(self):
        self.verified: Optional[bool] = None

    def __call__(self, device: torch.device) -> bool:
        if self.verified is None:
            self.verified = self._check(device)
            if not self.verified:
                logger.warning('the Triton dropout kernel differs from its torch reference on this '
                               'machine; adapter dropout uses the (slower) torch reference')
        return self.verified

    @staticmethod
    def _check(device) -> bool:
        try:
            gen = torch.Generator(device=device).manual_seed(0)
            for rows, cols, salt, seed_value in ((3, 1000, 7, 2**40 + 17), (17, 4096, 123, 5)):
                seed = torch.tensor([seed_value], dtype=torch.int64, device=device)
                x = torch.randn(rows, cols, device=device, generator=gen)
                for dtype in (torch.float32, torch.bfloat16):
                    xd = x.to(dtype)
                    got = dropped_triton(xd, seed, salt, 0.1, scale=0.5)
                    if not _same(got, dropped_reference(xd, seed, salt, 0.1, scale=0.5)):
                        return False
                acc = torch.ones_like(x)
                dropped_triton(x, seed, salt, 0.1, out=acc, accumulate=True)
                if not _same(acc, dropped_reference(x, seed, salt, 0.1, out=torch.ones_like(x),
                                                    accumulate=True)):
                    return False
                t, t_ref = x.flip(0), x.flip(0)
                acc, acc_ref = torch.ones_like(x), torch.ones_like(x)
                for out, out_ref in ((None, None), (acc, acc_ref)):
                    got = dropped_pair_triton(x, t, seed, salt, 0.1, 0.5, out)
                    ref = dropped_pair_reference(x, t_ref, seed, salt, 0.1, 0.5, out_ref)
                    if not (_same(got, ref) and _same(t, t_ref) and _same(acc, acc_ref)):
                        return False
            return True
        except Exception as error:  # a compile or launch failure: the reference still works
            logger.warning('Triton dropout kernel unavailable (%s: %s)', type(error).__name__, error)
            return False


def _same(got: torch.Tensor, ref: torch.Tensor) -> bool:
    """The same mask (zeros) and values equal up to the output dtype's rounding."""
    ulp = torch.finfo(ref.dtype).eps
    return bool(torch.equal(got == 0, ref == 0)
                and torch.allclose(got.float(), ref.float(), rtol=ulp, atol=0))


triton_matches_reference = _TritonCheck()


def dropped(x: torch.Tensor, seed: torch.Tensor, salt: int, p: float, scale: float = 1.0,
            out: Optional[torch.Tensor] = None, accumulate: bool = False,
            row_offset: int = 0) -> torch.Tensor:
    """`x * keep / (1 - p) * scale` for a 2-D `x`, written to `out` (which may be `x`), or
    added onto `out` with `accumulate=True`; the mask is
    `keep_mask(rows, cols, seed, salt, p, row_offset)` (`x` being rows `row_offset...` of
    the whole input, so a caller can drop a large input a block of rows at a time).

    >>> seed = torch.tensor([7])
    >>> x = torch.ones(2, 8)
    >>> y = dropped(x, seed, salt=0, p=0.5)
    >>> sorted(set(y.flatten().tolist())) == [0.0, 2.0] or y.eq(2.0).all().item()
    True
    >>> torch.equal(y, dropped(x, seed, 0, 0.5))
    True
    """
    if x.dim() != 2:
        raise ValueError(f'dropped takes a (rows, cols) tensor, got shape {tuple(x.shape)}')
    if (use_triton(x, seed) and x.stride(1) == 1 and (out is None or out.stride(1) == 1)
            and triton_matches_reference(x.device)):
        return dropped_triton(x, seed, salt, p, scale, out, accumulate, row_offset)
    return dropped_reference(x, seed, salt, p, scale, out, accumulate, row_offset)


def dropped_pair(x: torch.Tensor, t: torch.Tensor, seed: torch.Tensor, salt: int, p: float,
                 scale: float = 1.0, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Backward of one adapter's dropout with one mask computation: returns `dropped(x)` (a
    new tensor, for A's grad) and writes `dropped(t, scale=scale)` (the input-grad term) over
    `t`, or adds it onto `out`. `x` and `t` have the same (rows, cols) shape.

    >>> seed = torch.tensor([7])
    >>> x, t = torch.randn(3, 10), torch.randn(3, 10)
    >>> t_ref = dropped(t, seed, 2, 0.5, scale=3.0)
    >>> x_dropped = dropped_pair(x, t, seed, 2, 0.5, scale=3.0)
    >>> torch.equal(x_dropped, dropped(x, seed, 2, 0.5)), torch.allclose(t, t_ref)
    (True, True)
    """
    if (use_triton(x, t, seed) and x.stride(1) == 1 and t.stride(1) == 1
            and (out is None or out.stride(1) == 1) and triton_matches_reference(x.device)):
        return dropped_pair_triton(x, t, seed, salt, p, scale, out)
    return dropped_pair_reference(x, t, seed, salt, p, scale, out)


# ------------------------------------------------------------------------------------------
# the seed and the salts of one model
# ------------------------------------------------------------------------------------------
class DropoutSeed:
    """The dropout seed of one model's fused LoRA layers, and each layer's salt.

    `tensor(device)` is the one-element int64 tensor the kernels read; it is created at the
    first call on a device (an eager warm-up call, before any graph is recorded) and only ever
    written in place afterwards, so recorded graphs keep reading it. `advance()` draws the
    next value from torch's default CPU generator (the run's seed; restored by an exact
    resume) and writes it into every device copy.

    >>> seed = DropoutSeed()
    >>> layer_a, layer_b = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> seed.salt(layer_a), seed.salt(layer_b), seed.salt(layer_a)
    (0, 1, 0)
    >>> first = int(seed.tensor(torch.device('cpu')))
    >>> seed.advance(); int(seed.tensor(torch.device('cpu'))) != first
    True
    """

    def __init__(self):
        self.value = 0
        self._tensors: Dict[torch.device, torch.Tensor] = {}
        self._salts: Dict[int, int] = {}
        self._held = []  # the layers salted, so their ids stay unique

    def tensor(self, device: torch.device) -> torch.Tensor:
        t = self._tensors.get(device)
        if t is None:
            t = self._tensors[device] = torch.full((1, ), self.value, dtype=torch.int64,
                                                   device=device)
        return t

    def advance(self) -> None:
        self.value = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        for t in self._tensors.values():
            t.fill_(self.value)

    def salt(self, layer: nn.Module) -> int:
        """The salt of one LoRA layer: numbered in the order layers are first asked for."""
        own = getattr(layer, 'dropout_salt', None)
        if own is not None:
            return own
        key = id(layer)
        if key not in self._salts:
            self._salts[key] = len(self._salts) % _SALT_LIMIT
            self._held.append(layer)
        return self._salts[key]


class AdapterDropout:
    """One adapter's dropout in one call: the probability, the model's seed and the salt.

    `apply(x)` is `dropout(x)` (a new tensor; `x` itself when `p` is 0); `apply_(t, scale)`
    multiplies `t` in place by `keep / (1 - p) * scale`, the backward of `apply` (with a
    scale folded in); `add_(out, t, scale)` adds `t * keep / (1 - p) * scale` onto `out`;
    `grad_pair(x, t, scale, out)` does `apply(x)` and `apply_`/`add_` of `t` with one mask.
    """
    __slots__ = ('p', 'seed', 'salt')

    def __init__(self, p: float, seed: Optional['DropoutSeed'], salt: int = 0):
        self.p = float(p)
        self.seed = seed
        self.salt = int(salt)

    def _seed_on(self, t: torch.Tensor) -> torch.Tensor:
        return self.seed.tensor(t.device)

    def apply(self, x: torch.Tensor, row_offset: int = 0) -> torch.Tensor:
        if not self.p:
            return x
        return dropped(x, self._seed_on(x), self.salt, self.p, row_offset=row_offset)

    def matmul(self, x: torch.Tensor, weight_t: torch.Tensor, rows_per_block: int) -> torch.Tensor:
        """`apply(x) @ weight_t` with the dropped copy made `rows_per_block` rows at a time,
        so a wide input (the MLP's tokens x ffn) never has a whole dropped twin."""
        if not self.p or x.shape[0] <= rows_per_block:
            return self.apply(x) @ weight_t
        out = x.new_empty(x.shape[0], weight_t.shape[1])
        for start in range(0, x.shape[0], rows_per_block):
            stop = min(start + rows_per_block, x.shape[0])
            torch.mm(self.apply(x[start:stop], row_offset=start), weight_t, out=out[start:stop])
        return out

    def apply_(self, t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        if not self.p:
            return t.mul_(scale) if scale != 1.0 else t
        return dropped(t, self._seed_on(t), self.salt, self.p, scale, out=t)

    def grad_pair(self, x: torch.Tensor, t: torch.Tensor, scale: float = 1.0,
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Backward with one mask computation: returns `apply(x)` (for A's grad) and turns
        `t` into `t * keep / (1 - p) * scale` in place, or adds that onto `out`."""
        if not self.p:
            if out is not None:
                out.add_(t, alpha=scale)
            elif scale != 1.0:
                t.mul_(scale)
            return x
        return dropped_pair(x, t, self._seed_on(x), self.salt, self.p, scale, out)

    def add_(self, out: torch.Tensor, t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        if not self.p:
            return out.add_(t, alpha=scale)
        return dropped(t, self._seed_on(t), self.salt, self.p, scale, out=out, accumulate=True)


NO_DROPOUT = AdapterDropout(0.0, None)


def advance_before_each_forward(model: nn.Module, seed: DropoutSeed):
    """Advance `seed` before every training forward of `model` (a micro-batch); returns the
    hook handle. The recomputation in backward calls the decoder layers, not `model`, so it
    reads the forward's seed."""

    def hook(module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            seed.advance()

    return model.register_forward_pre_hook(hook, with_kwargs=True)
