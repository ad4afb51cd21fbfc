"""Key/value cache of a layer stack, for decoding one step at a time.

A decoder that extends its sequences by a token per step would otherwise rerun the whole prefix every step. With a
:class:`KVCache` passed to :class:`zoo.modules.layers.LayerStack` (through ``SplitBert(..., cache=)`` or a decoder's
``forward``), each call runs only the *new* positions:

- **self-attention**: per layer, the keys and values of the positions already run, ``(N, H, T, D)`` with one row
  per sequence (beam). A call attends over them plus the new positions (a causal mask is aligned to the bottom
  right, so new position ``i`` sees every earlier position and the new ones up to itself) and appends the new keys and
  values — all of them, or the first :attr:`KVCache.keep` (X²-VLM's "MLM as generation" reads a trailing ``[MASK]``
  whose keys must not stay: the next step puts the chosen token at that position). Because the earlier positions were
  computed under a causal mask, their states do not depend on later tokens, and the result equals a causal rerun of
  the whole prefix (up to float rounding).
- **cross-attention**: per layer, the keys and values of the context (image tokens, encoder states), projected once on
  the first call from the context given then, one row per context *example* ``(E, H, M, D)``, with the context's key
  padding mask. Sequence rows are example-major: rows ``g·e .. g·e + g - 1`` belong to example ``e``, ``g =``
  :attr:`KVCache.group` (1 on the first call of a beam search, the number of beams after it); the queries of an
  example's ``g`` rows are folded into one query block against that example's keys, so the keys are never copied
  per beam.
- **reordering**: a beam search keeps, at each step, some beams and drops others; :meth:`KVCache.reorder` takes the
  origin of each next row (``origin[i]``: the row that row ``i`` continues) and gathers the self-attention keys and
  values accordingly; ``examples`` drops context examples whose search has ended (UniVL's search stops an instance
  early). Rows may only continue rows of their own example; a reorder that breaks this raises.

Attention probabilities are not returned while a cache is in use.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["KVCache", "LayerCache"]

KV = tuple[Tensor, Tensor]


class KVCache:
    """The cached keys/values of every layer of one stack (see the module docstring).

    Args:
        num_layers: layers of the stack (indexed as in ``LayerStack.layer``; layers never run keep nothing).
        group: rows per context example on the first call (1: one row per example).
    """

    def __init__(self, num_layers: int, *, group: int = 1):
        if num_layers < 1 or group < 1:
            raise ValueError(f"num_layers={num_layers}, group={group}: both must be >= 1")
        self.self_kv: list[KV | None] = [None] * num_layers
        self.cross_kv: list[KV | None] = [None] * num_layers
        self.context_mask: Tensor | None = None
        self._has_context = False
        self.group = group
        #: how many of the next call's new positions keep their keys/values (None: all of them)
        self.keep: int | None = None

    # -- state -------------------------------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Positions whose self-attention keys/values are cached (the position of the next new token)."""
        for kv in self.self_kv:
            if kv is not None:
                return kv[0].shape[2]
        return 0

    @property
    def rows(self) -> int | None:
        """Sequence rows the cache holds (None before the first call)."""
        for kv in self.self_kv:
            if kv is not None:
                return kv[0].shape[0]
        return None

    def at(self, layer: int) -> LayerCache:
        """The view of layer ``layer`` that its attention modules read and write."""
        return LayerCache(self, layer)

    # -- used by the attention modules -------------------------------------------------------------------------------
    def extend(self, layer: int, key: Tensor, value: Tensor) -> KV:
        """Keys/values of the earlier positions followed by the new ones; keeps the new ones (or :attr:`keep`)."""
        past = self.self_kv[layer]
        past_len = 0
        if past is not None:
            if past[0].shape[0] != key.shape[0]:
                raise ValueError(f"the cache holds {past[0].shape[0]} rows but this call has {key.shape[0]}: "
                                 "call reorder(origin) when the rows change")
            past_len = past[0].shape[2]
            key, value = torch.cat([past[0], key], dim=2), torch.cat([past[1], value], dim=2)
        n = key.shape[2] if self.keep is None else past_len + self.keep
        self.self_kv[layer] = (key[:, :, :n], value[:, :, :n])
        return key, value

    def context(self, layer: int, project: Callable[[], KV], mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """The context's keys/values (``project()`` on the first call) and its key padding mask (the first call's)."""
        kv = self.cross_kv[layer]
        if kv is None:
            kv = self.cross_kv[layer] = project()
            if not self._has_context:
                self.context_mask, self._has_context = mask, True
        return kv[0], kv[1], self.context_mask

    def fold(self, q: Tensor, examples: int) -> Tensor:
        """``(E·g, H, L, D)`` queries → ``(E, H, g·L, D)``: the rows of an example as one query block."""
        n, h, length, d = q.shape
        if n != examples * self.group:
            raise ValueError(f"{n} query rows for {examples} context examples × group {self.group}: the rows must be "
                             "example-major, group rows per example (see reorder)")
        if self.group == 1:
            return q
        return q.view(examples, self.group, h, length, d).transpose(1, 2).reshape(examples, h, self.group * length, d)

    def unfold(self, out: Tensor) -> Tensor:
        """The inverse of :meth:`fold` on the attention output ``(E, H, g·L, Dv)`` → ``(E·g, H, L, Dv)``."""
        if self.group == 1:
            return out
        e, h, gl, d = out.shape
        g = self.group
        return out.view(e, h, g, gl // g, d).transpose(1, 2).reshape(e * g, h, gl // g, d)

    # -- used by searches --------------------------------------------------------------------------------------------
    def reorder(self, origin: Tensor, examples: Tensor | None = None) -> None:
        """Make row ``i`` of the next call continue row ``origin[i]`` of the last one.

        Args:
            origin: ``(N_next,)`` indices into the current rows; ``N_next`` may differ from the current number of rows
                (one row per example expanded to one per beam). Each row must continue a row of its own example.
            examples: ``(E_next,)`` indices of the context examples still decoded, ascending (default: all); their
                cross-attention keys/values are kept, the others dropped.
        """
        rows = self.rows
        origin = origin.long().flatten()
        n_next = origin.numel()
        if rows is None:
            return
        e_now = rows // self.group
        keep_examples = None if examples is None else examples.long().flatten().to(origin.device)
        e_next = e_now if keep_examples is None else keep_examples.numel()
        if e_next == 0 or n_next % e_next:
            raise ValueError(f"{n_next} next rows cannot be split evenly over {e_next} examples")
        g_next = n_next // e_next
        owner = torch.arange(n_next, device=origin.device) // g_next
        want = owner if keep_examples is None else keep_examples[owner]
        if not torch.equal(torch.div(origin, self.group, rounding_mode="floor"), want):
            raise ValueError("reorder: a row would continue a row of another example (rows are example-major, "
                             f"{self.group} per example now, {g_next} next)")
        if not (n_next == rows and torch.equal(origin, torch.arange(rows, device=origin.device))):
            self.self_kv = [None if kv is None else (kv[0].index_select(0, origin), kv[1].index_select(0, origin))
                            for kv in self.self_kv]
        if keep_examples is not None and not (e_next == e_now and torch.equal(
                keep_examples, torch.arange(e_now, device=origin.device))):
            self.cross_kv = [None if kv is None else (kv[0].index_select(0, keep_examples),
                                                      kv[1].index_select(0, keep_examples)) for kv in self.cross_kv]
            if self.context_mask is not None:
                self.context_mask = self.context_mask.index_select(0, keep_examples.to(self.context_mask.device))
        self.group = g_next


class LayerCache:
    """One layer's view of a :class:`KVCache` (what :class:`zoo.modules.layers.MultiHeadAttention` receives)."""

    __slots__ = ("layer", "owner")

    def __init__(self, owner: KVCache, layer: int):
        self.owner, self.layer = owner, layer

    def extend(self, key: Tensor, value: Tensor) -> KV:
        return self.owner.extend(self.layer, key, value)

    def context(self, project: Callable[[], KV], mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        return self.owner.context(self.layer, project, mask)

    def fold(self, q: Tensor, examples: int) -> Tensor:
        return self.owner.fold(q, examples)

    def unfold(self, out: Tensor) -> Tensor:
        return self.owner.unfold(out)
