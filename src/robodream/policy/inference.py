"""GigaWorld-Policy's fast inference path: what makes action-only control cheap.

:class:`~robodream.policy.modeling.GigaWorldPolicy` defines the model and a plain reference
sampler (:meth:`~robodream.policy.modeling.GigaWorldPolicy.sample_reference`, Euler steps of the
training-path velocity). This mixin computes the same numbers faster, as the paper's
action-only mode does (arXiv 2603.17240, Sec. 3.3) plus latency engineering measured on a CPU
(``robodream bench policy``; numbers and what was tried in benchmarks/RESULTS.md):

* the clean prefix (state + reference frames, RAMP's indicator and future latent ``z`` when the
  model is conditioned on them, and the GWM-feature tokens when it reads them) is encoded once per chunk and its keys/values
  cached for every denoising step (:meth:`GigaWorldPolicy.encode_prefix`);
* in action-only mode only the action tokens run, through the (narrow) action expert;
* every AdaLN modulation depends only on the task, the step times and the weights, so they
  are computed once and cached across calls (closed-loop control asks for the same task every
  chunk), keyed by the parameters' storage and version counters;
* :meth:`FastInference.compile_inference` compiles a whole chunk into one graph.

``tests/test_policy.py`` holds this path equal to the reference sampler (eager and compiled).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from robodream.models.transformer import KV

# Token groups of the block-causal mask, in sequence order (as in robodream.policy.modeling).
PREFIX, ACTION, FUTURE = 0, 1, 2


class FastInference:
    """Mixin of :class:`~robodream.policy.modeling.GigaWorldPolicy`: the cached, compilable sampler."""

    @torch.no_grad()
    def sample_fast(self, state: torch.Tensor, ref_latents: torch.Tensor, task_index: torch.Tensor,
                    a: torch.Tensor, f: torch.Tensor | None, times: torch.Tensor, mode: str,
                    ref_frames: torch.Tensor | None = None, indicator: torch.Tensor | None = None,
                    z_latents: torch.Tensor | None = None, gwm_latents: torch.Tensor | None = None):
        """:meth:`sample_reference` with the prefix cached, modulations cached and (after
        :meth:`compile_inference`) compiled chunks; same arguments plus the ``mode``."""
        from robodream.policy.modeling import PolicyOutput, block_causal_mask

        cfg = self.cfg
        dev = state.device
        dts = (times[1:] - times[:-1]).to(dev).view(-1, 1, 1, 1)  # (n, 1, 1, 1), negative
        if f is None:  # the GigaWorld-Policy fast path: action tokens only
            # A compiled chunk takes the stacked modulations (few inputs to guard), eager calls
            # the pre-split ones.
            kind = "action_stacked" if "_compiled_action_only_chunk" in self.__dict__ else "action_split"
            prefix_mods, step_mods, step_act = self._inference_modulations(task_index, times, kind)
            return PolicyOutput(actions=self._step("_action_only_chunk")(
                state, ref_latents, task_index, a, prefix_mods, step_mods, step_act, dts, ref_frames, indicator,
                z_latents, gwm_latents))
        # With-video and joint: every step's modulations from the cache ("joint" holds the
        # prefix segment's too: the joint model recomputes its prefix every step).
        P, n_noisy = cfg.n_prefix_tokens, cfg.horizon + cfg.n_future_tokens
        kind = "joint" if mode == "joint" else "with_video"
        prefix_mods, step_mods, act_mods, lat_mods = self._inference_modulations(task_index, times, kind)
        if kind == "with_video":  # actions and future tokens denoised on the cached prefix
            kv = self._step("encode_prefix")(state, ref_latents, task_index, prefix_mods, ref_frames, indicator,
                                             z_latents, gwm_latents)
            prefix = None
            mask = block_causal_mask(self.groups[P:P + n_noisy], self.groups[:P + n_noisy], cfg.mask).to(dev)
        else:  # joint: actions see the future video, nothing can be cached but the modulations
            kv, prefix = None, self._embed_prefix(state, ref_latents, ref_frames, indicator, z_latents,
                                                  gwm_latents=gwm_latents)
            groups = self.groups[:P + n_noisy]
            mask = block_causal_mask(groups, groups, cfg.mask).to(dev)
        a, f = self._step("_video_chunk")(a, f, prefix, kv, step_mods, mask, act_mods, lat_mods, dts)
        return PolicyOutput(actions=a, future_latents=self._unpatchify(f))

    def _action_only_step(self, a: torch.Tensor, kv: list[KV], mods: list, act_mod, dt: torch.Tensor) -> torch.Tensor:
        """One Euler step of action-only inference on the cached prefix: (B, H, action_dim) -> same.

        Only the action tokens run, through the action blocks (the action expert, or the shared
        blocks), attending to the cached prefix keys/values. ``mods``: this step's modulation per
        layer, its six parts stacked (6, B, 1, action_width) or as a tuple; ``act_mod``: the
        read-out's, likewise (two parts); ``dt``: (1, 1, 1) step size (negative).
        """
        x = self._embed_actions(a)
        for blk, mod, kv_i in zip(self.action_blocks or self.blocks, mods, kv):
            x, _ = blk(x, mod, kv_prefix=kv_i)
        return torch.addcmul(a, dt, self.action_out(x, act_mod))

    def _action_only_chunk(self, state: torch.Tensor, ref_latents: torch.Tensor, task_index: torch.Tensor,
                           a: torch.Tensor, prefix_mods: list | torch.Tensor, step_mods: list, step_act: list,
                           dts: torch.Tensor, ref_frames: torch.Tensor | None = None,
                           indicator: torch.Tensor | None = None, z_latents: torch.Tensor | None = None,
                           gwm_latents: torch.Tensor | None = None) -> torch.Tensor:
        """Action-only inference of one chunk: encode the clean prefix once, then ``len(step_mods)``
        Euler steps of the action tokens on its cached keys/values. a: (B, H, action_dim) noise
        -> the denoised chunk; ``prefix_mods``, ``step_mods``, ``step_act`` from
        :meth:`_inference_modulations` (indexed ``prefix_mods[layer]``, ``step_mods[k][layer]``,
        ``step_act[k]``); dts: (n, 1, 1, 1); ref_frames: (B, N, 3, H, W) uint8 raw frames of
        pixel-stem models, else None; indicator (B,), z_latents (B, N, C, h, w): RAMP's conditions
        (None: unknown / dropped); gwm_latents (B, L, c): GWM set-VAE latents (GWM-feature models).
        One function so that :meth:`compile_inference` compiles it
        whole."""
        kv = self.encode_prefix(state, ref_latents, task_index, prefix_mods, ref_frames, indicator, z_latents,
                                gwm_latents)
        for k in range(len(step_mods)):
            a = self._action_only_step(a, kv, step_mods[k], step_act[k], dts[k])
        return a

    def _video_chunk(self, a: torch.Tensor, f: torch.Tensor, prefix: torch.Tensor | None, kv: list[KV] | None,
                     step_mods: list, mask: torch.Tensor, act_mods: list, lat_mods: list,
                     dts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All Euler steps of with-video or joint inference (see :meth:`_video_step`): per step k,
        ``step_mods[k]``, ``act_mods[k]``, ``lat_mods[k]`` and ``dts[k]``. One function so that
        :meth:`compile_inference` compiles it whole."""
        for k in range(len(step_mods)):
            a, f = self._video_step(a, f, prefix, kv, step_mods[k], mask, act_mods[k], lat_mods[k], dts[k])
        return a, f

    def _video_step(self, a: torch.Tensor, f: torch.Tensor, prefix: torch.Tensor | None, kv: list[KV] | None,
                    mods: list[list[torch.Tensor]], mask: torch.Tensor, act_mod: torch.Tensor,
                    lat_mod: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One Euler step that denoises actions (B, H, action_dim) and future tokens (B, F*N*T, C*p*p).

        Either ``kv`` (cached clean prefix; with-video mode) or ``prefix`` (embedded prefix
        tokens recomputed every step: the joint model, or the uncached reference path) is given;
        ``mods[i]`` holds layer i's modulation per segment (prefix first when ``prefix`` is given).
        """
        xs = [self._embed_actions(a), self.latent_in(f) + self.pos_future]
        segments: tuple[int, ...] = (ACTION, FUTURE)
        if prefix is not None:
            xs, segments = [prefix] + xs, (PREFIX,) + segments
        xs = self._blocks(xs, segments, mods, mask=mask, kv_cache=kv)
        return a + dt * self.action_out(xs[-2], act_mod), f + dt * self.latent_out(xs[-1], lat_mod)

    def _step(self, name: str):
        return self.__dict__.get(f"_compiled{name}") or getattr(self, name)

    def compile_inference(self) -> None:
        """Compile inference with ``torch.compile``: the whole action-only chunk (prefix encoding
        and every Euler step as one graph), the with-video/joint chunk and the prefix encoding.

        At batch 1 on a CPU the 16-token matmuls and the many small ops between them cost more
        in dispatch than in arithmetic; one graph per chunk fuses the small ops and drops the
        per-step call overhead (``robodream bench policy`` compiles the joint model the same way
        for a like-for-like ratio). The first call of each mode after this compiles (seconds to
        a minute); results equal the eager path up to float rounding (tested). The weights are
        frozen into the graphs: after loading other weights, call this again.
        """
        for name in ("encode_prefix", "_action_only_chunk", "_video_chunk"):
            self.__dict__[f"_compiled{name}"] = torch.compile(getattr(self, name), dynamic=False,
                                                              options={"freezing": True})

    def _conditioning_parameters(self) -> list[nn.Parameter]:
        """Every parameter the AdaLN modulations are computed from (embeddings, modulation layers)."""
        modules = [self.time_embedding, self.task_embedding, self.action_out.modulation,
                   *(b.modulation for b in self.blocks), *(b.modulation for b in self.action_blocks or ())]
        if self.latent_out is not None:
            modules.append(self.latent_out.modulation)
        return [p for m in modules for p in m.parameters()]

    def _inference_modulations(self, task_index: torch.Tensor, times: torch.Tensor, kind: str) -> tuple:
        """Every AdaLN modulation one :meth:`sample` call needs, for ``task_index`` (B,) and the
        Euler schedule ``times`` (n + 1,).

        They depend only on the task, the step times and the weights, not on the observation,
        so they are cached across calls (closed-loop control asks for the same task every
        chunk; the joint model and with-video mode are cached alike, so the benchmark's ratios
        compare like with like). The cache key holds the storage and version counter of every
        parameter they are computed from, so an optimiser or EMA step, ``load_state_dict``, a
        copy of the model or a move to another device recomputes them (weights created under
        ``torch.inference_mode`` have no version counter and are never cached); the device and
        the autocast dtype are part of the key too. One entry per ``kind``.

        Kinds and returns:
            ``"action_split"`` / ``"action_stacked"`` (action-only; eager / compiled chunk):
            ``(prefix, mods, act)``. Stacked: prefix (depth, 6, B, 1, D), mods
            (n, depth, 6, B, 1, Da), act (n, 2, B, 1, Da) — few inputs for a compiled chunk.
            Split: nested lists ``prefix[i]``, ``mods[k][i]``, ``act[k]`` of tuples of the
            parts, (D,) vectors at batch 1 (eager calls skip the per-block chunking).
            ``"with_video"`` / ``"joint"``: ``(prefix, step_mods, act_mods, lat_mods)`` with
            ``step_mods[k][i][j]`` layer i's modulation of segment j at step k, (B, 1, 6 D_j)
            (``[PREFIX, ACTION, FUTURE]`` for joint, whose prefix runs every step at t = 0,
            ``[ACTION, FUTURE]`` for with-video, whose cached prefix takes ``prefix``:
            per block (B, 1, 6D)), and per step (B, 1, 2D) read-out modulations.
        """
        params = self._conditioning_parameters()
        cache = self.__dict__.setdefault("_modulation_cache", {})
        dev = task_index.device.type
        # Inference tensors (weights created under torch.inference_mode) have no version
        # counter: nothing is cached for them. An autocast region computes in another dtype.
        key = None if any(p.is_inference() for p in params) else (
            tuple(task_index.tolist()), tuple(times.tolist()), str(task_index.device),
            torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev),
            tuple((p.data_ptr(), p._version) for p in params))
        if key is not None and kind in cache and cache[kind][0] == key:
            return cache[kind][1]
        out = self._compute_modulations(task_index, times, kind)
        if key is not None:
            cache[kind] = (key, out)
        return out

    def _compute_modulations(self, task_index: torch.Tensor, times: torch.Tensor, kind: str) -> tuple:
        """Uncached body of :meth:`_inference_modulations` (same arguments and returns)."""
        B, n, dev = len(task_index), len(times) - 1, task_index.device
        D, Da = self.cfg.dim, self.cfg.action_width
        cond_clean = self._cond(torch.zeros(B, 1, device=dev), task_index)  # (B, 1, D)
        cond = self._cond(times[:-1].to(dev).expand(B, n), task_index)  # (B, n, D)
        prefix = [blk.modulate(cond_clean) for blk in self.blocks]  # (B, 1, 6D) each
        if kind == "joint" or kind == "with_video":
            noisy = (ACTION, FUTURE)
            mods_noisy = self._modulations(noisy, [cond] * len(noisy))  # (B, n, 6 D_seg)
            act, lat = self.action_out.modulate(cond), self.latent_out.modulate(cond)
            step_mods = []
            for k in range(n):
                mods = [[m[:, k:k + 1] for m in layer] for layer in mods_noisy]
                if kind == "joint":  # the prefix segment first, at t = 0
                    mods = [[mc] + m for mc, m in zip(prefix, mods)]
                step_mods.append(mods)
            return (prefix, step_mods, [act[:, k:k + 1] for k in range(n)], [lat[:, k:k + 1] for k in range(n)])
        if kind not in ("action_split", "action_stacked"):
            raise ValueError(f"unknown modulation kind {kind!r}")
        blocks = self.action_blocks or self.blocks
        prefix = torch.stack(prefix).view(len(self.blocks), B, 6, 1, D).transpose(1, 2)  # (depth, 6, B, 1, D)
        mods = torch.stack([blk.modulate(cond) for blk in blocks])  # (depth, B, n, 6 Da)
        mods = mods.view(len(blocks), B, n, 6, 1, Da).permute(2, 0, 3, 1, 4, 5)  # (n, depth, 6, B, 1, Da)
        act = self.action_out.modulate(cond).view(B, n, 2, 1, Da).permute(1, 2, 0, 3, 4)  # (n, 2, B, 1, Da)
        if kind == "action_split":
            def parts(m: torch.Tensor, width: int) -> tuple:
                return tuple(m.reshape((-1, width) if B == 1 else (-1, B, 1, width)).unbind(0))
            return ([parts(m, D) for m in prefix], [[parts(m, Da) for m in step] for step in mods],
                    [parts(a, Da) for a in act])
        return prefix.contiguous(), mods.contiguous(), act.contiguous()
