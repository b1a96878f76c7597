"""CPU training speed-ups that keep the recipe: cheaper dropout masks, frozen weights stored in bf16.

Measured on the benchmark CPU (docs/benchmarks.md): drawing dropout masks with ``bernoulli_`` took about a third
of a bf16 LoRA training step, as long as all the matrix multiplications. Here a mask costs one 64-bit word per
four elements (16 random bits each, compared with a threshold), from a PCG64 stream that a 128-bit seed drawn
from torch's generator starts, and backward reuses the saved mask. Dropout stays dropout: same p (to
1/65536), same 1/(1-p) scaling, every draw rooted in torch's generator (so seeding and the Trainer's exact resume
still hold); only the random stream differs. The masks are drawn in ``lorafit.masks``.

In attention, ``softmax -> dropout -> @ v`` is one autograd function that keeps the probabilities and the mask
but recomputes the dropped probabilities in backward (2 bytes less per attention weight held for backward).

PEFT's LoRA layers run ``lora_forward``: the LoRA dropout's 1/(1-p) folded into the LoRA scaling and the scaled
add one ``add(alpha=)`` (3 element-wise passes fewer per adapted projection and step, same masks). Under CPU
autocast the hidden states that query, key and value (and their LoRA paths) all read are cast once
(``shared_input_casts``), not once per projection.

Under bf16 autocast every frozen ``nn.Linear`` is cast to bf16 on every call; storing those frozen weights in
bf16 gives bit-identical matmuls without the casts, and halves their memory. Trainable weights stay fp32.

Everything is applied for the duration of training only (``training_speedups``) and undone afterwards, except
the bf16 weights, which the caller keeps for bf16 scoring (the values autocast would use anyway).

In fp32 training (``hold_less``: fp32 tensors, autocast off) dropout holds its masks for backward as bits, and
PEFT's LoRA layers run ``_LoraPath``, which holds the layer input once for query's and value's adapters instead of a
masked copy each: LoRA's peak RSS within the memory goal without handing memory back to the OS (which cost 5-6% of
fp32 speed).

On any device, ``first_token_only`` runs the last encoder layer of a BERT-family sequence classifier for the
first token alone: the head reads nothing else (RoBERTa's head takes ``features[:, 0]``, BERT's pooler
``hidden_states[:, 0]``), so the other tokens' query projection, attention, output projection and feed-forward in
that layer are wasted work, 10/12 of a layer's matmuls (~7% of roberta-base's). Keys and values still come from
every token. Exact: same logits and gradients up to float rounding (tested).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import cache
from typing import Any

import torch
from torch import nn

from lorafit.masks import keep_mask, pack_mask, unpack_mask

ATTENTION_NAME = "lorafit_sdpa"


def hold_less(x: torch.Tensor) -> bool:
    """Whether dropout on ``x`` holds its mask as bits and LoRA its input once per layer (``_LoraPath``): in fp32
    training (an fp32 tensor, autocast off), where activations are twice the size and this keeps LoRA's peak within
    the goal without the memory release. In bf16 training the masks stay bytes: there the packing and the
    recomputed masked input cost 2% of a step (measured, docs/benchmarks.md) and LoRA's peak is well within the goal
    without them."""
    return x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def _hold(ctx: Any, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """What a dropout's ctx saves of its mask on ``x``: the bits (``hold_less``) or the mask itself."""
    ctx.mask_shape = keep.shape if hold_less(x) else None
    return pack_mask(keep) if ctx.mask_shape is not None else keep


def _held(ctx: Any, saved: torch.Tensor) -> torch.Tensor:
    return unpack_mask(saved, ctx.mask_shape) if ctx.mask_shape is not None else saved


def _apply(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """``x * scale`` with the dropped elements zeroed. Multiplying by the keep mask's 0/1 bytes is a vectorised
    pass (0.15 ms for 1.3M fp32 elements on the benchmark CPU, against 0.9 ms for ``masked_fill_`` with the boolean
    mask), and multiplying by 1 or 0 is exact: the same values as ``masked_fill`` (up to the sign of zero; inf * 0
    gives NaN, as in torch's own dropout)."""
    if scale == 1.0:  # the scaling folded into a later op (the LoRA path): one pass
        return x.mul(keep.view(torch.uint8))
    return x.mul(scale).mul_(keep.view(torch.uint8))


class _Dropout(torch.autograd.Function):
    """Dropout with the cheaper mask, scaled by ``scale`` (1/(1-p), or 1 where a later op scales instead)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float, scale: float) -> torch.Tensor:  # type: ignore[override]
        keep = keep_mask(x.shape, p)
        ctx.save_for_backward(_hold(ctx, x, keep))
        ctx.scale = scale
        return _apply(x, keep, scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (saved,) = ctx.saved_tensors
        return _apply(grad, _held(ctx, saved), ctx.scale), None, None


class _AttentionCore(torch.autograd.Function):
    """``dropout(softmax(scores)) @ v`` that keeps the probabilities and the mask for backward but not the dropped
    probabilities (recomputed there, one element-wise pass): 2 bytes per attention weight less than the three ops
    apart, which is most of what attention stores for backward at the longest batches."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        probs = torch.softmax(scores, dim=-1)
        keep = keep_mask(probs.shape, p)
        ctx.scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(probs, _hold(ctx, probs, keep), v)
        return torch.matmul(_apply(probs, keep, ctx.scale), v)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # type: ignore[override]
        probs, saved, v = ctx.saved_tensors
        keep = _held(ctx, saved)
        grad_v = torch.matmul(_apply(probs, keep, ctx.scale).transpose(-1, -2), grad)
        grad_probs = _apply(torch.matmul(grad, v.transpose(-1, -2)), keep, ctx.scale)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        return grad_scores, grad_v, None


class _LoraPath(torch.autograd.Function):
    """``B(A(x * keep))`` for one LoRA adapter (bias-free; the dropout's 1/(1-p) left to the caller's scaling) that
    holds ``x`` and the mask's bits for backward instead of the masked copy that A's weight gradient needs: query's
    and value's adapters read the same ``x``, so a layer holds one copy of it instead of two masked ones (6 MiB per
    2,048 tokens in fp32), and backward recomputes the masked input (one element-wise pass). Same ops, same values."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        keep = keep_mask(x.shape, p)
        h = torch.matmul(_apply(x, keep, 1.0), a.t())
        ctx.save_for_backward(x, a, b, h, pack_mask(keep))
        return torch.matmul(h, b.t())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, a, b, h, bits = ctx.saved_tensors
        keep = unpack_mask(bits, x.shape)
        g = grad.reshape(-1, grad.shape[-1])
        grad_h = g.mm(b)
        grad_b = g.t().mm(h.reshape(-1, h.shape[-1])) if ctx.needs_input_grad[2] else None
        grad_a = grad_h.t().mm(_apply(x, keep, 1.0).reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        grad_x = _apply(grad_h.mm(a).view(x.shape), keep, 1.0) if ctx.needs_input_grad[0] else None
        return grad_x, grad_a, grad_b, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Drop-in for ``F.dropout`` on CPU tensors; other devices (fused GPU kernels) keep torch's own."""
    if not training or p <= 0 or x.device.type != "cpu":
        return nn.functional.dropout(x, p, training)
    if p >= 1:
        return torch.zeros_like(x)
    return _Dropout.apply(x, p, 1.0 / (1.0 - p))


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the cheaper CPU mask; same p, same eval behaviour, no state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except in CPU training with attention dropout, where SDPA falls back to
    its math path with ``bernoulli_`` masks: the same math here, with the cheaper mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    simple = query.shape[1] == key.shape[1] and not causal and query.device.type == "cpu"
    if not (module.training and dropout > 0 and simple):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
    q, k, v = (t.to(dtype) for t in (query, key, value))
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    with torch.autocast("cpu", enabled=False):
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
        if attention_mask is not None:
            scores.add_(_additive_mask(attention_mask, scores.dtype))
        out = _AttentionCore.apply(scores, v, dropout)
    return out.transpose(1, 2).contiguous(), None


class _LastTensorCache(threading.local):
    """One entry per thread: a tensor derived (in a dtype) from the last input seen, rebuilt when the input is
    another tensor, was changed in place since, or the dtype differs. Holds the input and its derivative until the
    next input or ``clear`` (which clears the calling thread's entry); parallel parts of a batch each keep their own."""

    def __init__(self) -> None:
        self.entry: tuple[torch.Tensor, int, torch.dtype, torch.Tensor] | None = None
        _CACHES.add(self)

    def get(self, x: torch.Tensor, dtype: torch.dtype, build: Any) -> torch.Tensor:
        e = self.entry
        if e is None or e[0] is not x or e[1] != x._version or e[2] != dtype:
            self.entry = e = (x, x._version, dtype, build(x, dtype))
        return e[3]

    def clear(self) -> None:
        self.entry = None


_CACHES: weakref.WeakSet[_LastTensorCache] = weakref.WeakSet()


def clear_thread_caches() -> None:
    """Drop what every ``_LastTensorCache`` holds for the calling thread (a parallel part's thread, once its part is
    done: the tensors it cached are not needed again)."""
    for cache_ in list(_CACHES):
        cache_.clear()


_MASKS = _LastTensorCache()  # every layer of a forward pass reuses its attention mask's additive form


def _build_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)
    return mask.to(dtype)


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The attention mask as scores to add (0 or the dtype's minimum), built once per forward pass, not per layer.
    Adding it in place gives what ``masked_fill(~mask, min)`` gives, bit for bit (min plus any score below 2**100
    rounds to min), without the copy of the scores and the backward pass over them."""
    return _MASKS.get(mask, dtype, _build_additive)


def lora_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """PEFT's LoRA ``Linear.forward`` for one plain adapter on CPU, in fewer element-wise passes over the
    activations: ``base(x) + B(A(dropout(x))) * s`` becomes ``base(x) + B(A(x * keep)) * (s / (1 - p))``, the
    dropout's 1/(1-p) folded into the LoRA scaling (A and B are linear and bias-free) and the scaled add one
    ``add(alpha=)``; with dropout in fp32, ``_LoraPath`` holds the unmasked input (shared by the layer's adapters)
    and the mask's bits for backward. Same mask draws, same values up to float rounding. Under autocast the input is not
    first cast to the adapter's fp32 (PEFT's cast, which autocast undoes). Anything else (several or disabled
    adapters, DoRA and other variants, a LoRA bias, merged weights, extra arguments, other devices) runs PEFT's own
    forward."""
    names = [a for a in self.active_adapters if a in self.lora_A]
    if (args or kwargs or self.disable_adapters or self.merged or len(names) != 1 or names[0] in self.lora_variant
            or x.device.type != "cpu" or self.lora_B[names[0]].bias is not None):
        return type(self).forward(self, x, *args, **kwargs)
    name = names[0]
    drop = self.lora_dropout[name]
    p = drop.p if isinstance(drop, nn.Dropout) and drop.training else 0.0
    if p >= 1:
        return type(self).forward(self, x)
    result = self.base_layer(x)
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    if not torch.is_autocast_enabled("cpu"):
        x = self._cast_input_dtype(x, lora_a.weight.dtype)
    scale = self.scaling[name]
    if p > 0 and hold_less(x):  # fp32 (autocast off): the input held once, the masked copy recomputed in backward
        y = _LoraPath.apply(x, lora_a.weight, lora_b.weight, p)
        return torch.add(result, y, alpha=scale / (1.0 - p)).to(result.dtype)
    if p > 0:
        x = _Dropout.apply(x, p, 1.0)
        scale = scale / (1.0 - p)
    return torch.add(result, lora_b(lora_a(x)), alpha=scale).to(result.dtype)


@contextmanager
def fused_lora(model: nn.Module) -> Iterator[int]:
    """Run every PEFT LoRA ``Linear`` of ``model`` through ``lora_forward``; yields how many, restored on exit."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        yield 0
        return
    layers = [m for m in model.modules() if type(m) is LoraLinear and "forward" not in vars(m)]
    for m in layers:
        m.forward = lora_forward.__get__(m)
    try:
        yield len(layers)
    finally:
        for m in layers:
            del m.forward


# names of the projections that read the same input, per model family (BERT/RoBERTa, DistilBERT, DeBERTa, others)
SHARED_INPUT_PROJECTIONS = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"),
                            ("query_proj", "key_proj", "value_proj"), ("q_proj", "k_proj", "v_proj"))


@contextmanager
def shared_input_casts(model: nn.Module) -> Iterator[int]:
    """Under CPU autocast, cast the fp32 hidden states that an attention block's query, key and value projections
    (and their LoRA paths) all read to the autocast dtype once, not once per projection: autocast casts each
    Linear's input on its own, 3-5 passes over the same tensor forward and as many for their gradients backward.
    The values are the ones autocast would use; only the gradients of those consumers are now summed in the
    autocast dtype before the one cast back (rounding). Yields how many projections are hooked; removed on exit."""
    casts = _LastTensorCache()

    def cast(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.device.type != "cpu" \
                or not torch.is_autocast_enabled("cpu"):
            return None
        return (casts.get(x, torch.get_autocast_dtype("cpu"), torch.Tensor.to), *args[1:])

    handles = []
    for parent in model.modules():
        children = dict(parent.named_children())
        for names in SHARED_INPUT_PROJECTIONS:
            if all(n in children for n in names):
                handles += [children[n].register_forward_pre_hook(cast) for n in names]
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()
        casts.clear()


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if ATTENTION_NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def _configs(model: nn.Module) -> list[Any]:
    seen: dict[int, Any] = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


def frozen_linears_to_bf16(model: nn.Module) -> int:
    """Store every frozen nn.Linear's weight and bias in bf16 (for bf16 autocast); returns how many.

    The checkpoint's tensors are views of the memory-mapped safetensors file, whose pages stay resident while
    any tensor still maps it: the other tensors are copied out too, so the fp32 pages of the converted weights
    leave memory (-0.3 GB for roberta-base, measured)."""
    n = 0
    for m in model.modules():
        if type(m) is nn.Linear and not any(p.requires_grad for p in m.parameters(recurse=False)):
            m.to(torch.bfloat16)
            n += 1
    if n:
        with torch.no_grad():
            for p in model.parameters():
                if p.dtype != torch.bfloat16:
                    p.data = p.data.clone()
            for m in model.modules():
                for key, buf in list(m._buffers.items()):
                    if buf is not None:
                        m._buffers[key] = buf.clone()
    return n


@contextmanager
def attention_implementation(model: nn.Module, name: str, replacing: str | None = None) -> Iterator[int]:
    """Run ``model`` with another registered attention implementation (e.g. eager for ONNX export), only where
    the current one is ``replacing`` when given; yields how many configs changed, restored on exit."""
    configs = [(cfg, cfg._attn_implementation) for cfg in _configs(model)
               if replacing is None or cfg._attn_implementation == replacing]
    for cfg, _ in configs:
        cfg._attn_implementation = name
    try:
        yield len(configs)
    finally:
        for cfg, impl in configs:
            cfg._attn_implementation = impl


@contextmanager
def training_speedups(model: nn.Module, *, fast_dropout: bool = True) -> Iterator[dict[str, int]]:
    """Swap every nn.Dropout for FastDropout, route SDPA attention through ``attention`` and LoRA layers through
    ``lora_forward`` (the dropout's scaling folded in); in every case ``shared_input_casts`` (which acts under CPU
    autocast only); undone on exit."""
    with ExitStack() as undo:
        swapped = attention_configs = lora_layers = 0
        shared_casts = undo.enter_context(shared_input_casts(model))
        if fast_dropout:
            for parent in list(model.modules()):
                for name, child in list(parent.named_children()):
                    if type(child) is nn.Dropout:
                        fast = FastDropout(child.p, child.inplace)
                        fast.train(child.training)
                        setattr(parent, name, fast)
                        undo.callback(setattr, parent, name, child)
                        swapped += 1
            _register_attention()
            attention_configs = undo.enter_context(attention_implementation(model, ATTENTION_NAME, replacing="sdpa"))
            undo.callback(_MASKS.clear)
            lora_layers = undo.enter_context(fused_lora(model))
        yield {"dropout_modules": swapped, "attention_configs": attention_configs, "lora_layers": lora_layers,
               "shared_casts": shared_casts}


# ---- huge pages for torch's big CPU buffers ---------------------------------------------------------------
THP_MIN_BYTES = 2 << 20  # torch gives buffers of this size and more huge pages (c10's gAlloc_threshold_thp)


def torch_huge_pages() -> bool:
    """Whether torch's CPU allocator asks for transparent huge pages for its big buffers: it does when
    THP_MEM_ALLOC_ENABLE=1 was set before its first allocation (the `lorafit` command sets it: fewer page faults,
    measured in docs/benchmarks.md), and it then aligns those buffers to a page, which glibc's own allocations of
    that size are not (they sit 64 bytes past one). Read off three probe buffers; whether the kernel grants huge
    pages is its own setting (/sys/kernel/mm/transparent_hugepage/enabled)."""
    if not sys.platform.startswith("linux"):
        return False
    probes = [torch.empty(THP_MIN_BYTES + 4096 * i, dtype=torch.uint8) for i in range(3)]
    return all(p.data_ptr() % 4096 == 0 for p in probes)


# ---- returning freed memory to the OS between layers (glibc) ---------------------------------------------
# Trim only for layer outputs of at least this many elements (5.7 MiB in fp32; roberta-base: batches of 1,953 tokens
# and more, the longest of each length-grouped megabatch, which set the peak). Smaller batches reuse the pages the
# longest left free, and trimming them only re-faults those (measured on the Zen 3 VM, fp32, 50 steps: LoRA's peak
# 0.62x full fine-tuning's, as with 2**20, at 0.98x instead of 0.91-0.93x the speed of not trimming).
TRIM_MIN_ELEMENTS = 1_500_000
RELEASE_EVERY = 3  # trim after every third layer, counting back from the last (measured: docs/benchmarks.md)


@cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` or None (other C libraries, other systems)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The encoder's layer modules of a BERT-family model (unwrapping PEFT); empty when there is none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, "base_model", base)
    for holder in ("encoder", "transformer"):
        layers = getattr(getattr(body, holder, None), "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers):
            return list(layers)
    return []


@contextmanager
def release_memory(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Return freed heap memory to the OS after every third encoder layer, forward and backward (``malloc_trim``).

    A step's transient tensors (matmul outputs, GELU and softmax temporaries) are freed within the forward pass,
    but glibc keeps most of the freed heap pages, so resident memory grows by about as much again as the tensors
    saved for backward hold (measured: +1.75 GiB peak for 0.97 GiB live after one LoRA forward pass of roberta-base,
    2,048 tokens). Trimming at layer boundaries keeps the peak near what is live. Each trim's returned pages are
    faulted in again by the next allocations, so only every ``RELEASE_EVERY``-th layer trims, counting back from the
    last (the forward pass peaks near the top): the layers in between reuse each other's freed memory, which has the
    same sizes within a step (measured in fp32, roberta-base classifier, batch 32: the same peak RSS as trimming at
    every layer, at 0.93x instead of 0.8x the speed of not trimming). Batches whose layer output has fewer than
    ``TRIM_MIN_ELEMENTS`` elements are left alone (small models, or the last layer of a classifier that runs it for
    the first token only: the heap walk would cost more than the memory is worth). Numerics are untouched; yields
    how many layers are hooked (0 where the C library has no ``malloc_trim``), removed on exit."""
    trim = _malloc_trim() if enabled else None
    layers = encoder_layers(model)[::-1][::RELEASE_EVERY] if trim is not None else []

    def in_backward(grad: torch.Tensor) -> None:
        trim(0)  # returns None: the gradient passes unchanged

    def after_forward(module: nn.Module, args: Any, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        if not isinstance(out, torch.Tensor) or out.numel() < TRIM_MIN_ELEMENTS:
            return
        trim(0)
        if out.requires_grad:
            out.register_hook(in_backward)

    handles = [layer.register_forward_hook(after_forward) for layer in layers]
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


# ---- first token only in the last layer (sequence classification) -----------------------------------------
# heads known to read only the first token of the last hidden state (BERT's pooler, RoBERTa-style heads)
FIRST_TOKEN_CLASSIFIERS = frozenset({
    "BertForSequenceClassification", "RobertaForSequenceClassification", "XLMRobertaForSequenceClassification",
    "CamembertForSequenceClassification", "ElectraForSequenceClassification",
})


def _last_layer(model: nn.Module) -> nn.Module | None:
    """The last encoder layer of a supported sequence classifier (unwrapping PEFT), or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base).__name__ not in FIRST_TOKEN_CLASSIFIERS:
        return None
    layers = getattr(getattr(base.base_model, "encoder", None), "layer", None)
    if not layers:
        return None
    layer = layers[-1]
    attn = getattr(getattr(layer, "attention", None), "self", None)
    parts = (attn, getattr(layer.attention, "output", None), getattr(layer, "feed_forward_chunk", None))
    if any(x is None for x in parts) or getattr(layer, "is_decoder", False) or \
            not all(hasattr(attn, a) for a in ("query", "key", "value", "attention_head_size", "scaling", "config")):
        return None
    if getattr(sys.modules[type(attn).__module__], "eager_attention_forward", None) is None:
        return None
    return layer


def _first_token_forward(layer: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         *args: Any, **kwargs: Any) -> torch.Tensor:
    """The layer's own modules in its own order, with queries and everything after attention for token 0 only."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attn = layer.attention.self
    b, n = hidden_states.shape[:2]
    first = hidden_states[:, :1]
    dh = attn.attention_head_size
    q = attn.query(first).view(b, 1, -1, dh).transpose(1, 2)
    k = attn.key(hidden_states).view(b, n, -1, dh).transpose(1, 2)
    v = attn.value(hidden_states).view(b, n, -1, dh).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1]
    eager = sys.modules[type(attn).__module__].eager_attention_forward
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager)
    context, _ = attend(attn, q, k, v, attention_mask, dropout=attn.dropout.p if attn.training else 0.0,
                        scaling=attn.scaling)
    out = layer.attention.output(context.reshape(b, 1, -1), first)
    return layer.feed_forward_chunk(out)


@contextmanager
def first_token_only(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Run the last encoder layer of a supported sequence classifier for the first token only (see the module
    docstring); yields whether it applies. Other models (token classification, unknown heads) run unchanged."""
    layer = _last_layer(model) if enabled else None
    if layer is None or "forward" in vars(layer):
        yield False
        return
    layer.forward = _first_token_forward.__get__(layer)
    try:
        yield True
    finally:
        del layer.forward
