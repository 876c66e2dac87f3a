"""CUDA graphs of checkpointed decoder layers: one launch per layer pass instead of hundreds.

Why: a 7B QLoRA step at 2k tokens issues about ten thousand small kernels (dequantize, LoRA
matmuls, norms, RoPE) and the H200 finishes them faster than Python can launch them: the
profile in benchmarks/results shows about 200 ms of GPU work in 300 ms steps. A CUDA graph
replays a recorded layer pass with one call.

What is recorded, per decoder layer and per input signature (shapes, dtypes, constants):

- the forward graph: the layer under no_grad (checkpointing keeps no activations), its
  output copied into a buffer outside the graph;
- the backward graph: the layer recomputed with grad, then `torch.autograd.grad` for its
  input and its trainable parameters; the input grad is copied out and the parameter grads
  are added into buffers that `LayerGraphs` owns and hands to the parameters as `.grad`.

Every graph of a model shares one memory pool, and nothing allocated inside a graph is used
after its replay (results are copied to buffers outside the pool), so graphs may replay in
any order and the pool holds about one layer pass of temporaries.

The eager `LayerCheckpointer` runs instead, with identical numerics, when:
- the tensors are not on CUDA, or the batch has more than `max_tokens` tokens (long rows are
  compute-bound: a graph saves nothing there and its buffers cost memory);
- a module in the layer draws from torch's generator (a dropout module, attention dropout):
  recomputation must replay the forward's masks, which a graph can't do. The fused LoRA
  layers' adapter dropout does not count: its masks are a function of a seed tensor that
  the graphs read and that advances outside them (`xft.model.kernels.dropout`);
- a process group exists (DDP's reducer and DeepSpeed, even on one process, hook autograd's
  own gradient accumulation, which the graph bypasses);
- a keyword argument is neither a tensor, a tuple of tensors nor a plain constant; more than
  `max_signatures` signatures were seen (unpacked rows of varying length: only the first
  lengths that recur get graphs; packed rows all have `max_length` tokens); or a capture
  failed (logged once).

The first `warmup` calls of each signature run eagerly (they compile Triton kernels and
verify the direct dequantization); the next call captures.
"""
import functools
import logging
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

_CONSTANT_TYPES = (bool, int, float, str, type(None), torch.dtype)


def flatten_kwargs(kwargs: dict):
    """Split keyword arguments into tensors and a hashable description of everything else.

    Returns `(tensors, key)`, or None when a value is neither a tensor, a tuple/list of
    tensors, nor a plain constant. `rebuild_kwargs(kwargs, tensors)` puts other tensors in.

    >>> t, key = flatten_kwargs({'a': torch.zeros(2), 'b': None, 'c': (torch.ones(1), torch.ones(3))})
    >>> len(t), key[0]
    (3, ('a', 'tensor', (2,), torch.float32, False))
    """
    tensors, key = [], []
    for name in sorted(kwargs):
        value = kwargs[name]
        if torch.is_tensor(value):
            tensors.append(value)
            key.append((name, 'tensor', tuple(value.shape), value.dtype, value.requires_grad))
        elif isinstance(value, (tuple, list)) and value and all(torch.is_tensor(v) for v in value):
            tensors.extend(value)
            key.append((name, type(value).__name__,
                        tuple((tuple(v.shape), v.dtype, v.requires_grad) for v in value)))
        elif isinstance(value, _CONSTANT_TYPES):
            key.append((name, 'constant', value))
        else:
            return None
    return tensors, tuple(key)


def rebuild_kwargs(kwargs: dict, tensors: List[torch.Tensor]) -> dict:
    """`kwargs` with its tensors (in `flatten_kwargs` order) replaced by `tensors`."""
    out, it = {}, iter(tensors)
    for name in sorted(kwargs):
        value = kwargs[name]
        if torch.is_tensor(value):
            out[name] = next(it)
        elif isinstance(value, (tuple, list)) and value and all(torch.is_tensor(v) for v in value):
            out[name] = type(value)(next(it) for _ in value)
        else:
            out[name] = value
    return out


def draws_random_numbers(layer: nn.Module) -> bool:
    """True if a module of `layer` draws from torch's generator in training (dropout, attention
    dropout): a recorded graph would replay the capture's masks. Adapter dropout of the
    fused LoRA layers is not such a module: its masks are a function of a seed tensor the
    graph reads (`xft.model.kernels.dropout`), and those layers list it as replayable."""
    replayable = {id(d) for module in layer.modules()
                  for d in getattr(module, 'replayable_dropouts', lambda: ())()}
    for module in layer.modules():
        if (isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
                and id(module) not in replayable):
            return True
        if float(getattr(module, 'attention_dropout', 0.0) or 0.0) > 0:
            return True
    return False


def distributed() -> bool:
    """True once a process group exists: DDP's reducer and DeepSpeed (even on one process)
    hook autograd's gradient accumulation, which a replayed graph bypasses."""
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


class CudaGraph:
    """One recorded call of `body()` on CUDA: `capture(body)` then `replay()`.

    Warms `body` up once on the capture stream first, as CUDA graphs need (lazy cuBLAS
    workspaces and the like are created outside the recording).
    """

    def __init__(self, pool, stream):
        self.pool = pool
        self.stream = stream
        self.graph = None

    def capture(self, body: Callable[[], None], warmup: Optional[Callable[[], None]] = None) -> None:
        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            (warmup or body)()
        current.wait_stream(self.stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=self.pool, stream=self.stream,
                              capture_error_mode='thread_local'):
            body()

    def replay(self) -> None:
        self.graph.replay()


class EagerReplay:
    """The same interface run eagerly: what the CPU tests use to check the buffer logic."""

    def __init__(self, pool=None, stream=None):
        self.body = None

    def capture(self, body: Callable[[], None], warmup: Optional[Callable[[], None]] = None) -> None:
        self.body = body

    def replay(self) -> None:
        self.body()


class _Signature:
    """Buffers outside the graphs that every layer's graphs of one signature read and write."""

    def __init__(self, hidden: torch.Tensor, kw_tensors: List[torch.Tensor]):
        self.hidden_in = torch.empty_like(hidden, requires_grad=False)
        self.hidden_out = torch.empty_like(hidden, requires_grad=False)
        self.grad_out = torch.empty_like(hidden, requires_grad=False)
        self.kw = [torch.empty_like(t, requires_grad=False) for t in kw_tensors]
        self._kw_source: List[Optional[torch.Tensor]] = [None] * len(kw_tensors)

    def load_kwargs(self, kw_tensors: List[torch.Tensor]) -> None:
        """Copy the step's masks/rotary tables in once: every layer gets the same objects."""
        for i, (buf, tensor) in enumerate(zip(self.kw, kw_tensors)):
            if self._kw_source[i] is not tensor:
                buf.copy_(tensor)
                self._kw_source[i] = tensor  # held, so its id can't be reused while compared


class GraphFamily:
    """What the layers of one model share: the memory pool, the capture stream, the
    signature buffers and the switches."""

    def __init__(self, warmup: int = 2, max_tokens: int = 4096, max_signatures: int = 2,
                 graph_type=None, force: bool = False):
        self.warmup = warmup
        self.force = force  # tests: take the graph path on the CPU (with EagerReplay)
        self.max_tokens = max_tokens
        self.max_signatures = max_signatures
        self.graph_type = graph_type or CudaGraph
        self.signatures: Dict[tuple, _Signature] = {}
        self.failed: set = set()
        self.replays = 0
        self.told_dropout = False
        self.members: List['LayerGraphs'] = []
        self._pool = None
        self._stream = None

    def new_graph(self):
        if self.graph_type is CudaGraph and self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            self._stream = torch.cuda.Stream()
        return self.graph_type(self._pool, self._stream)

    def release(self) -> None:
        """Drop every recorded graph and buffer (their memory goes back to the allocator);
        later calls warm up and record again."""
        for member in self.members:
            member.forward_graphs.clear()
            member.backward_graphs.clear()
            member.calls.clear()
            # A grad attached now stays the parameter's until zero_grad drops it; the
            # buffers must not outlive that, or eager steps keep every grad allocated.
            member.grad_buffers = None
        self.signatures.clear()
        self.failed.clear()
        self._pool = None

    def signature(self, key, hidden, kw_tensors) -> Optional[_Signature]:
        sig = self.signatures.get(key)
        if sig is None and len(self.signatures) < self.max_signatures:
            sig = self.signatures[key] = _Signature(hidden, kw_tensors)
        return sig


class LayerGraphs:
    """A decoder layer's `_gradient_checkpointing_func`: graphs when they apply, else
    `checkpointer` (the eager `LayerCheckpointer`, which also parks inputs on the host)."""

    def __init__(self, checkpointer, layer: nn.Module, family: GraphFamily):
        self.checkpointer = checkpointer
        self.family = family
        family.members.append(self)
        self.layer = layer
        self.params: List[nn.Parameter] = []  # the trainable ones, taken at the first graph
        self.grad_buffers: Optional[List[torch.Tensor]] = None
        self.random = None  # whether the layer draws from torch's generator (first call)
        self.calls: Dict[tuple, int] = {}
        self.forward_graphs: Dict[tuple, object] = {}
        self.backward_graphs: Dict[tuple, object] = {}
        self._anchor = None

    # -- deciding -------------------------------------------------------------------------
    def _key(self, fn, hidden, args):
        if self.random is None:
            self.random = draws_random_numbers(self.layer)
            if self.random and hidden.is_cuda and not self.family.told_dropout:
                self.family.told_dropout = True
                logger.warning('CUDA graphs are off: the layers draw from torch\'s random generator '
                               '(a dropout module other than the fused LoRA adapters\' own, or '
                               'attention dropout), whose masks a recorded recomputation cannot '
                               'replay')
        if args or not isinstance(fn, functools.partial) or self.random:
            return None
        n_tokens = hidden.numel() // hidden.shape[-1]
        if not (self.family.force or hidden.is_cuda) or n_tokens > self.family.max_tokens:
            return None
        if not torch.is_grad_enabled() or distributed():
            return None
        flat = flatten_kwargs(fn.keywords)
        if flat is None:
            return None
        kw_tensors, kw_key = flat
        if any(t.requires_grad for t in kw_tensors):
            return None  # their grads would be lost: only the hidden states get one
        device_type = hidden.device.type
        autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        key = (tuple(hidden.shape), hidden.dtype, hidden.requires_grad, kw_key, autocast)
        return None if key in self.family.failed else (key, kw_tensors)

    def __call__(self, fn, hidden, *args):
        found = self._key(fn, hidden, args)
        if found is not None:
            key, kw_tensors = found
            self.calls[key] = self.calls.get(key, 0) + 1
            if self.calls[key] > self.family.warmup:
                # Layer 0's input needs no grad, the others' do: same buffers, own graphs.
                sig = self.family.signature(key[:2] + key[3:], hidden, kw_tensors)
                if sig is not None:
                    if not self.params:
                        self.params = [p for p in self.layer.parameters() if p.requires_grad]
                    if self._anchor is None:
                        self._anchor = torch.empty(0, device=hidden.device, requires_grad=True)
                    return _GraphedLayer.apply(self, fn, key, sig, kw_tensors, hidden, self._anchor)
        return self.checkpointer(fn, hidden, *args)

    # -- the two recorded passes --------------------------------------------------------
    def _static_fn(self, fn, sig):
        return functools.partial(fn.func, *fn.args, **rebuild_kwargs(fn.keywords, sig.kw))

    def run_forward(self, fn, key, sig) -> None:
        graph = self.forward_graphs.get(key)
        if graph is None:
            static_fn = self._static_fn(fn, sig)

            def body():
                with torch.no_grad():
                    out = static_fn(sig.hidden_in)
                if not torch.is_tensor(out):
                    raise TypeError(f'layer returned {type(out).__name__}, not a tensor')
                sig.hidden_out.copy_(out)

            graph = self.family.new_graph()
            graph.capture(body)
            self.forward_graphs[key] = graph
        graph.replay()
        self.family.replays += 1

    def run_backward(self, fn, key, sig, autocast, input_grad: bool) -> None:
        graph = self.backward_graphs.get(key)
        if graph is None:
            static_fn = self._static_fn(fn, sig)
            buffers = self._grad_buffers()
            device_type, enabled, dtype = autocast

            def body(accumulate=True):
                hidden = sig.hidden_in.detach().requires_grad_(input_grad)
                with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled,
                                                         cache_enabled=False):
                    out = static_fn(hidden)
                inputs = ([hidden] if input_grad else []) + self.params
                grads = list(torch.autograd.grad(out, inputs, sig.grad_out, allow_unused=True))
                if input_grad:
                    sig.hidden_out.copy_(grads.pop(0))  # the input grad, out of the pool
                pairs = [(buf, g) for buf, g in zip(buffers, grads) if g is not None]
                if pairs and accumulate:  # the capture's warm-up run must not add
                    torch._foreach_add_([b for b, _ in pairs], [g.to(b.dtype) for b, g in pairs])

            graph = self.family.new_graph()
            graph.capture(body, warmup=functools.partial(body, accumulate=False))
            self.backward_graphs[key] = graph
        self._attach_grads()
        graph.replay()
        self.family.replays += 1

    # -- gradients ------------------------------------------------------------------------
    def _grad_buffers(self) -> List[torch.Tensor]:
        if self.grad_buffers is None:
            self.grad_buffers = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                                 for p in self.params]
        return self.grad_buffers

    def _attach_grads(self) -> None:
        """Make each parameter's `.grad` the buffer the graph adds into.

        After `zero_grad(set_to_none=True)` the grads are None: the buffers are zeroed and
        attached. A grad autograd made in an eager pass is copied in first.
        """
        buffers = self._grad_buffers()
        if self.params and self.params[0].grad is buffers[0] and all(
                p.grad is b for p, b in zip(self.params, buffers)):
            return
        to_zero = []
        for param, buf in zip(self.params, buffers):
            if param.grad is None:
                to_zero.append(buf)
            elif param.grad is not buf:
                buf.copy_(param.grad)
            param.grad = buf
        if to_zero:
            torch._foreach_zero_(to_zero)

    def fail(self, key, error) -> None:
        self.family.failed.add(key)
        self.forward_graphs.pop(key, None)
        self.backward_graphs.pop(key, None)
        logger.warning('CUDA graph capture failed (%s: %s); this layer shape runs eagerly',
                       type(error).__name__, error)


class _GraphedLayer(torch.autograd.Function):
    """Forward: the forward graph. Backward: the backward graph. The layer input is parked
    (offloaded or kept) by the eager checkpointer's own machinery."""

    @staticmethod
    def forward(ctx, graphs: LayerGraphs, fn, key, sig: _Signature, kw_tensors, hidden, anchor):
        sig.load_kwargs(kw_tensors)
        sig.hidden_in.copy_(hidden)
        try:
            graphs.run_forward(fn, key, sig)
        except Exception as error:  # capture refused: this signature runs eagerly from now on
            graphs.fail(key, error)
            with torch.no_grad():
                out = fn(hidden)
            sig = None
        else:
            out = sig.hidden_out.clone()
        ctx.graphs, ctx.fn, ctx.key, ctx.sig = graphs, fn, key, sig
        ctx.kw_tensors = kw_tensors
        ctx.input_grad = hidden.requires_grad
        device_type = hidden.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type),
                        torch.get_autocast_dtype(device_type))
        ctx.parked = graphs.checkpointer.park(hidden)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        graphs, sig = ctx.graphs, ctx.sig
        hidden = graphs.checkpointer.unpark(ctx.parked)
        ctx.parked = None
        if sig is not None and ctx.key not in graphs.family.failed:
            sig.load_kwargs(ctx.kw_tensors)
            sig.hidden_in.copy_(hidden)
            sig.grad_out.copy_(grad_out)
            try:
                graphs.run_backward(ctx.fn, ctx.key, sig, ctx.autocast, ctx.input_grad)
            except Exception as error:
                graphs.fail(ctx.key, error)
            else:
                grad_in = sig.hidden_out.clone() if ctx.input_grad else None
                return None, None, None, None, None, grad_in, None
        return (None, None, None, None, None) + _eager_backward(ctx, hidden, grad_out) + (None, )


def _eager_backward(ctx, hidden, grad_out) -> Tuple[Optional[torch.Tensor]]:
    """Recompute and backpropagate without a graph (after a failed capture)."""
    hidden = hidden.detach().requires_grad_(ctx.input_grad)
    device_type, enabled, dtype = ctx.autocast
    with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
        out = ctx.fn(hidden)
    torch.autograd.backward(out, grad_out)
    return (hidden.grad if ctx.input_grad else None, )
