"""LaCT causal LM as HF `PreTrainedModel`s: `LaCTModel` (embeddings, blocks, final norm) and `LaCTForCausalLM`
(+ untied LM head, ReFINE's pad-masked NTP loss, cached generation). Spec lact-model.md §3–§5."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import initialization as init
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from refine.models.lact.cache import LaCTCache, LaCTSegment
from refine.models.lact.configuration_lact import LaCTConfig
from refine.models.lact.layer_lact import LaCTSWIGLULayer
from refine.models.lact.modules import GatedMLP, LowRankFastWeight, RMSNorm


class LaCTBlock(GradientCheckpointingLayer):
    """Pre-norm residual block: x + LaCT(norm(x)), then + MLP(norm(·)) with fla's fused residual-add norm."""

    def __init__(self, config: LaCTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = LaCTSWIGLULayer(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = GatedMLP(config.hidden_size, config.mlp_intermediate_size)

    def forward(self, hidden_states: torch.Tensor, segment: LaCTSegment, past_key_values: LaCTCache | None = None):
        residual = hidden_states
        mixed = self.attn(self.attn_norm(hidden_states), segment, past_key_values)
        if self.config.fuse_norm:
            normed, residual = self.mlp_norm(mixed, residual)
        else:
            residual = residual + mixed
            normed = self.mlp_norm(residual)
        return residual + self.mlp(normed)


class LaCTPreTrainedModel(PreTrainedModel):
    config_class = LaCTConfig
    config: LaCTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LaCTBlock"]
    _supports_cache_class = True
    _supports_sdpa = True  # accepted so verl/HF attn_implementation settings load; LaCT picks its own kernels
    _supports_flash_attn = True
    _skip_keys_device_placement = ["past_key_values"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """Upstream init (training from scratch only): normal(initializer_range) linears/embeddings, zero biases,
        unit norms, qk_scale 1 / qk_offset 0, fast weights as spec §3."""
        std = self.config.initializer_range
        gain = self.config.fw_init_gain
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, LowRankFastWeight):
            rank, d_in = module.w_left.shape[-1], module.w_right.shape[-1]
            init.normal_(module.w_left, mean=0.0, std=gain / rank**0.5)
            init.normal_(module.w_right, mean=0.0, std=gain / d_in**0.5)
        elif isinstance(module, LaCTSWIGLULayer):
            init.ones_(module.qk_scale)
            init.zeros_(module.qk_offset)
            init.normal_(module.w1, mean=0.0, std=module.fw_hidden_dim**-0.5)
            for name in ("w0", "w2"):
                weight = getattr(module, name)
                if isinstance(weight, nn.Parameter):
                    init.normal_(weight, mean=0.0, std=module.fw_head_dim**-0.5)

    @staticmethod
    def _finalize_model_loading(model, load_config, loading_info):
        """Refuse a checkpoint whose keys do not match the model: never random-init a missing weight silently."""
        loading_info = PreTrainedModel._finalize_model_loading(model, load_config, loading_info)
        missing = sorted(loading_info.missing_keys)
        unexpected = sorted(loading_info.unexpected_keys)
        if missing or unexpected:

            def listing(label, keys):
                more = f" (+{len(keys) - 10} more)" if len(keys) > 10 else ""
                return f"{label} keys {keys[:10]}{more}"

            parts = [listing(label, keys) for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
            raise ValueError(
                f"{model.__class__.__name__} checkpoint {load_config.pretrained_model_name_or_path!r} does not match "
                f"the model: {'; '.join(parts)}"
            )
        return loading_info


def _positions_2d(length: int, batch: int, device) -> torch.Tensor:
    return torch.arange(length, device=device).expand(batch, length)


class LaCTModel(LaCTPreTrainedModel):
    """Embeddings → LaCT blocks → final RMSNorm."""

    def __init__(self, config: LaCTConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([LaCTBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: LaCTCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        """Positions count from the start of the (padded) row, or continue from `past_key_values`; `position_ids`
        is accepted for API compatibility and only checked (upstream ignores it). `use_cache` defaults to False
        (upstream never caches); `generate` turns it on."""
        if kwargs.get("cu_seqlens") is not None:
            raise ValueError("LaCTModel: cu_seqlens (packed sequences) is not supported; use padded batches")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LaCTModel: pass exactly one of input_ids or inputs_embeds")
        output_hidden_states = bool(output_hidden_states)
        return_dict = True if return_dict is None else return_dict
        use_cache = bool(use_cache) and not (self.gradient_checkpointing and self.training)
        hidden = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = hidden.shape[:2]
        mask = self._check_mask(attention_mask, batch)
        _check_not_packed(position_ids, mask)

        cache = past_key_values
        if cache is not None and not isinstance(cache, LaCTCache):
            raise ValueError(f"LaCTModel: past_key_values must be a LaCTCache, got {type(cache).__name__}")
        if cache is None and use_cache:
            cache = LaCTCache(self.config.num_hidden_layers, self.config.num_lact_heads)

        restore = None
        if cache is None or cache.is_empty:
            segment, hidden, restore = self._whole_segment(hidden, mask)
        else:
            segment = self._continuation(cache, mask, batch, length, hidden.device)

        all_hidden = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden = layer(hidden, segment=segment, past_key_values=cache)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        if restore is not None:  # exact-padding mode: back from the compacted order to the caller's order
            hidden = restore(hidden)
            all_hidden = [restore(h) for h in all_hidden]
        if cache is not None:
            cache.seen_tokens += length
            cache.valid_count = segment.next_rank

        hidden_states = tuple(all_hidden) if output_hidden_states else None
        if not return_dict:
            return tuple(x for x in (hidden, cache, hidden_states) if x is not None)
        return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=cache, hidden_states=hidden_states)

    @staticmethod
    def _check_mask(attention_mask, batch):
        if attention_mask is None:
            return None
        if attention_mask.dim() != 2 or attention_mask.shape[0] != batch:
            raise ValueError(
                f"LaCTModel: attention_mask must be 2-D [batch, seq] 0/1, got shape {tuple(attention_mask.shape)}"
            )
        return attention_mask

    def _whole_segment(self, hidden, mask):
        """Positions for a pass over whole rows (no cache yet). Returns (segment, hidden, restore-or-None)."""
        batch, length = hidden.shape[:2]
        device = hidden.device
        positions = _positions_2d(length, batch, device)
        if mask is not None:
            if mask.shape[1] != length:
                raise ValueError(f"LaCTModel: attention_mask has {mask.shape[1]} columns, inputs have {length}")
            mask = mask.bool()
            if bool(mask.all()):
                mask = None
        if mask is None:
            full = torch.full((batch,), length, dtype=torch.long, device=device)
            return LaCTSegment(rope_pos=positions, rank=positions, next_rank=full), hidden, None
        lengths = mask.sum(-1)
        if not self.config.lact_exact_padding:
            # Official: only attention sees the mask; RoPE, chunks and fast weights use the padded row (spec Q7).
            rank = (mask.long().cumsum(-1) - 1).clamp(min=0)
            return LaCTSegment(rope_pos=positions, rank=rank, next_rank=lengths, valid=mask), hidden, None
        # Exact padding: move each row's real tokens to the front (stable), run, and move them back.
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        inverse = torch.argsort(order, dim=1)
        compact_valid = positions < lengths[:, None]

        def gather(x, index):
            return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))

        segment = LaCTSegment(rope_pos=positions, rank=positions, next_rank=lengths, valid=compact_valid,
                              ttt_lengths=lengths)
        return segment, gather(hidden, order), lambda x: gather(x, inverse)

    def _continuation(self, cache: LaCTCache, mask, batch, length, device) -> LaCTSegment:
        """Positions of new tokens appended to a cache (decoding)."""
        if cache.valid_count.shape[0] != batch:
            raise ValueError(f"LaCTModel: batch {batch} does not match the cache batch {cache.valid_count.shape[0]}")
        if mask is None:
            new_valid = torch.ones(batch, length, dtype=torch.bool, device=device)
        elif mask.shape[1] in (cache.seen_tokens + length, length):
            new_valid = mask[:, -length:].bool()
        else:
            raise ValueError(
                f"LaCTModel: attention_mask has {mask.shape[1]} columns; expected {cache.seen_tokens + length} "
                f"(cached + new) or {length} (new only)"
            )
        rank = (cache.valid_count[:, None] + new_valid.long().cumsum(-1) - 1).clamp(min=0)
        next_rank = cache.valid_count + new_valid.sum(-1)
        if self.config.lact_exact_padding:
            return LaCTSegment(rope_pos=rank, rank=rank, next_rank=next_rank, valid=new_valid, ttt_take=new_valid)
        positions = cache.seen_tokens + _positions_2d(length, batch, device)
        return LaCTSegment(rope_pos=positions, rank=rank, next_rank=next_rank, valid=new_valid)


def _check_not_packed(position_ids, mask):
    """Packed rows (positions restarting between two real tokens of a row) would silently leak fast weights across
    documents. Pads may carry any position (verl right-pads position_ids with 0), so only real pairs count."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[1] < 2:
        return
    restarts = position_ids[:, 1:] < position_ids[:, :-1]
    if mask is not None and mask.shape == position_ids.shape:
        real = mask.bool()
        restarts = restarts & real[:, 1:] & real[:, :-1]
    if bool(restarts.any()):
        raise ValueError(
            "LaCTModel: position_ids restart inside a row (packed sequences); LaCT needs padded batches "
            "(set use_remove_padding=False)"
        )


def shifted_ntp_labels(labels: torch.Tensor, attention_mask: torch.Tensor | None, mask_pads: bool) -> torch.Tensor:
    """labels[:, 1:] + a column of −100; with `mask_pads` also −100 where the *unshifted* attention_mask is 0
    (ReFINE's variant: the last left pad, which predicts the first real token, is ignored too)."""
    shifted = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)
    if mask_pads and attention_mask is not None:
        shifted = shifted.masked_fill(attention_mask[:, -labels.shape[1]:].to(shifted.device) == 0, -100)
    return shifted


class LaCTForCausalLM(LaCTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: LaCTConfig):
        super().__init__(config)
        self.model = LaCTModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # LaCT needs its own cache (fast-weight state); forward creates it when generate asks for use_cache.
        return False

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: LaCTCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """Logits for the last `logits_to_keep` positions (0 = all); with `labels`, the mean NTP cross-entropy
        over non-ignored shifted labels (pads ignored when `config.mask_pad_labels`)."""
        kwargs.pop("output_attentions", None)  # attentions are never returned (as upstream)
        kwargs.pop("num_items_in_batch", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        else:
            kept = hidden[:, logits_to_keep]
        logits = self.lm_head(kept)

        loss = None
        if labels is not None:
            full_logits = logits if kept is hidden else self.lm_head(hidden)
            shifted = shifted_ntp_labels(labels, attention_mask, self.config.mask_pad_labels).to(full_logits.device)
            loss_dtype = torch.promote_types(full_logits.dtype, torch.float32)  # fp32 loss for bf16 logits
            loss = F.cross_entropy(full_logits.to(loss_dtype).reshape(-1, full_logits.shape[-1]), shifted.reshape(-1),
                                   ignore_index=-100)
        if return_dict is False:
            out = (logits, outputs.past_key_values, outputs.hidden_states)
            out = tuple(x for x in out if x is not None)
            return ((loss,) + out) if loss is not None else out
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states
        )
